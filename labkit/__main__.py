"""``python -m labkit resolve 1.1`` prints the folder of a lab (used by the Makefile)."""
import sys

from labkit.loader import resolve_lab

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "resolve":
        print("usage: python -m labkit resolve LAB   (LAB: 1.1, phase-01/lab-01 or a path)", file=sys.stderr)
        sys.exit(2)
    try:
        print(resolve_lab(sys.argv[2]))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
