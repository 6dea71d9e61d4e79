"""The first code that runs inside a sandboxed Python process (given; not a TODO).

``python -I -B sandbox_boot.py <workspace> <net 0|1> -m pytest ...`` or ``... <workspace> <net> script.py args``.

It installs a PEP 578 audit hook, then runs the module or script. The hook is the
*Python-level* layer of the sandbox (the kernel-level layer, rlimits + a network namespace +
the wall-clock kill, is set up by ``solution.run_sandboxed``). It refuses, with PermissionError:

- creating processes: ``os.fork`` / ``os.forkpty`` / ``os.system`` / ``os.exec*`` /
  ``os.posix_spawn`` / ``os.spawn*`` / ``subprocess.Popen`` (a test needs none of them);
- the network, unless allowed: ``socket.connect`` / ``bind`` / ``sendto`` / ``sendmsg`` /
  ``getaddrinfo`` / ``gethostbyname``;
- opening for writing anything outside the workspace, and opening or listing for reading
  anything outside the workspace and the Python installation (``sys.prefix`` and friends);
- loading native code through ``ctypes`` (the usual way around an audit hook).

An audit hook cannot be removed from Python code, but it is no security boundary against
native code (a C extension already installed can still make raw syscalls): the README says
what is and is not enforced.
"""
import os
import runpy
import sys

ROOT = os.path.realpath(sys.argv[1])
NETWORK = sys.argv[2] == "1"
ARGS = sys.argv[3:]

_READ_ROOTS = tuple(sorted({os.path.realpath(p) for p in (
    ROOT, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
    os.path.dirname(os.path.realpath(sys.executable)))}))
_READ_FILES = frozenset({"/dev/null", "/dev/urandom", "/dev/random", "/etc/localtime"})
_PROC_EVENTS = frozenset({"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                          "subprocess.Popen", "os.startfile", "pty.spawn"})
_NET_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                         "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                         "socket.gethostbyaddr"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _check_path(event: str, path, writing: bool) -> None:
    if isinstance(path, int) or path is None:  # an already-open descriptor
        return
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.fspath(path))
    if writing:
        if real != "/dev/null" and not _inside(real, (ROOT,)):
            raise PermissionError(f"sandbox: writing outside the working copy is refused ({real})")
    elif real not in _READ_FILES and not _inside(real, _READ_ROOTS):
        raise PermissionError(f"sandbox: reading outside the working copy is refused ({real})")


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        _check_path(event, path, writing)
    elif event in ("os.listdir", "os.scandir"):
        _check_path(event, args[0] if args and args[0] is not None else ".", False)
    elif event in ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                   "os.truncate", "shutil.rmtree"):
        for p in args[:2]:
            if isinstance(p, (str, bytes, os.PathLike)):
                _check_path(event, p, True)
    elif event in _PROC_EVENTS:
        raise PermissionError(f"sandbox: creating processes is refused ({event})")
    elif event in _NET_EVENTS and not NETWORK:
        raise PermissionError(f"sandbox: the network is disabled ({event})")
    elif event in ("ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata"):
        raise PermissionError(f"sandbox: native code through ctypes is refused ({event})")


def main() -> None:
    if not ARGS:
        raise SystemExit("usage: sandbox_boot.py <workspace> <net> (-m module | script.py) [args...]")
    os.chdir(ROOT)
    sys.addaudithook(_hook)
    if ARGS[0] == "-m":
        sys.argv = [ARGS[1], *ARGS[2:]]
        sys.path.insert(0, ROOT)
        runpy.run_module(ARGS[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(ARGS)
        sys.path.insert(0, os.path.dirname(os.path.realpath(ARGS[0])))
        runpy.run_path(ARGS[0], run_name="__main__")


if __name__ == "__main__":
    main()
