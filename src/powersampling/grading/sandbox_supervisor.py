"""The HumanEval sandbox's supervisor: a script, run as ``python -I -B -c <its text>``.

:func:`powersampling.grading.code.run_program` starts it in a fresh interpreter in its
own session. It reads its settings as one JSON line on stdin, forks the code process,
and reports the child's pid and exit status on stdout, one JSON line each. See the
module doc of :mod:`powersampling.grading.code` for the layers it enforces.

It runs in isolated mode (``-I``: no environment variables, no user site, nothing of the
working directory on ``sys.path``), so it uses the standard library only and must never
import ``powersampling``. Importing it does nothing.
"""

import ctypes
import json
import os
import resource
import sys
import traceback


def deny(what):
    raise PermissionError("sandbox: " + what + " is not allowed")


def install_guards(root):
    """An audit hook refusing writes outside ``root``, processes, signals, sockets, ctypes."""
    root = os.path.realpath(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_events = {
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
        "os.link", "os.symlink", "os.truncate", "os.utime", "os.mkfifo", "os.mknod",
        "shutil.rmtree", "shutil.copyfile", "shutil.copytree", "shutil.move",
        "shutil.chown", "os.chflags", "os.lchflags",
    }  # fmt: skip
    banned = (
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
        "subprocess.Popen", "pty.spawn", "ctypes.", "socket.", "resource.setrlimit",
        "resource.prlimit", "signal.pthread_kill", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "sys.addaudithook",
    )  # fmt: skip
    realpath, fspath, getpid = os.path.realpath, os.fsdecode, os.getpid

    def inside(p):
        if isinstance(p, int) or p is None:
            return True  # an fd it already holds
        try:
            p = realpath(fspath(p))
        except Exception:
            return False
        return p == root or p.startswith(root + os.sep) or p == os.devnull

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if writing and not inside(path):
                deny("writing " + repr(path))
        elif event in path_events:
            if not all(inside(a) for a in args if isinstance(a, (str, bytes, os.PathLike))):
                deny(event + " outside the working directory")
        elif event in ("os.kill", "os.killpg"):
            if args[0] != getpid():
                deny("signalling another process")
        elif event.startswith(banned):
            deny(event)

    sys.addaudithook(hook)


def child(cfg):
    """The code process: limits, identity, guards, then the program. Returns its exit code."""
    os.chdir(cfg["dir"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for src, dst in ((null, 0), (out, 1), (err, 2)):
        os.dup2(src, dst)
    os.closerange(3, 1 << 16)  # the status pipe and anything else inherited
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.getuid() == 0
    # New network namespace: root can do it directly, others inside a user namespace.
    if libc.unshare(0x40000000) != 0 and not root:
        libc.unshare(0x10000000 | 0x40000000)
    mem = cfg["memory_mb"] << 20
    cpu = int(cfg["timeout_s"]) + 1
    for lim, val in (
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"])),
        (resource.RLIMIT_NOFILE, (64, 64)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (1, 1)),
    ):
        resource.setrlimit(lim, val)
    if root and cfg["drop_privileges"]:
        os.chown(".", cfg["uid"], cfg["uid"])
        os.chown("stdout.txt", cfg["uid"], cfg["uid"])
        os.chown("stderr.txt", cfg["uid"], cfg["uid"])
        libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep capabilities across setuid
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            ]

        caps = (Data * 2)()
        caps[0].effective = caps[0].permitted = 1 << 2  # CAP_DAC_READ_SEARCH only
        if libc.capset(ctypes.byref(Header(0x20080522, 0)), caps) != 0:
            raise OSError("capset failed")
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    with open(cfg["program"]) as f:
        source = f.read()
    token = cfg["token"]
    guards = cfg["guards"]
    cfg.clear()  # the program gets no view of the token through the settings
    if guards:
        install_guards(os.getcwd())
    try:
        exec(compile(source, "solution.py", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        sys.stderr.write(f"SystemExit({exc.code!r}) before the tests finished\n")
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(1, ("\n" + token + "\n").encode())
    return 0


def main():
    cfg = json.loads(sys.stdin.readline())
    status = os.fdopen(os.dup(1), "w")
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = child(cfg)
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass
        os._exit(code)
    status.write(json.dumps({"pid": pid}) + "\n")
    status.flush()
    _, st = os.waitpid(pid, 0)
    status.write(json.dumps({"status": st}) + "\n")
    status.flush()


if __name__ == "__main__":
    main()
