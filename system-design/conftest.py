"""Make ``import capacity`` work for the tests under system-design/ (the folder name has a hyphen)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
