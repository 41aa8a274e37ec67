"""What the kernel enforces on the sandbox's code process: Landlock, seccomp, identity.

The second part of the supervisor script (see :mod:`powersampling.grading.sandbox_supervisor`):
standard library only, no ``powersampling`` import, run inside the sandbox. The grader imports
:func:`landlock_abi` from here as well, to know which layers the sandbox will have.
"""

import ctypes
import os
import stat
import sys

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


# ----------------------------------------------------------------------------------------
# Identity: as root, the code process becomes another user, with one capability at most.


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
