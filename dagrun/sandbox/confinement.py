"""OS confinement of a sandbox child: the layers that hold when the language policy has been bypassed.

Applied by the child to itself once everything scripts can reach is loaded, before it says ready:

- **network namespace** (when the child starts as root): the child has no network interface at all;
- **Landlock** (Linux 5.13+, when enabled): no file or directory can be opened, created, written or
  removed, whatever its permissions (an empty filesystem view; the pipes already open stay usable); from
  ABI 4 no TCP bind or connect, from ABI 6 no signal to a process outside the child;
- **seccomp** (libseccomp, through pyseccomp): syscalls a script never needs fail with EPERM — every
  socket, process and thread creation, exec, ptrace and reading other processes' memory, mounts and
  namespaces, kernel modules, kexec, bpf, io_uring, keyrings, every signal, and every way
  to create, modify, rename or delete a file (an `open` for writing included);
- the rlimits and the switch to an unprivileged uid done by `child.confine`.

A layer the kernel (or machine) lacks is not applied; the child reports the layers it applied, and the
pool warns once for each one missing (never a silent downgrade). Invariant: a layer that is available
and fails to apply stops the child (it never serves half-confined).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

NETWORK_NAMESPACE = "network namespace"
LANDLOCK = "landlock"
SECCOMP = "seccomp"
LAYERS = (NETWORK_NAMESPACE, LANDLOCK, SECCOMP)
# What a script that got past the language policy could do when a layer is missing.
WITHOUT = {
    NETWORK_NAMESPACE: "dagrun does not run as root, so sandbox children share the host's network namespace"
    " (seccomp and Landlock still refuse them sockets)",
    LANDLOCK: "this kernel has no Landlock, so a script that escapes the language policy can read every file"
    " its uid may read",
    SECCOMP: "libseccomp cannot be loaded, so a script that escapes the language policy can open sockets,"
    " start processes and change files its uid may write (install libseccomp2)",
}

_CLONE_NEWNET = 0x40000000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
# Every filesystem access right of each Landlock ABI (linux/landlock.h): all handled, none granted.
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# Denied with EPERM. A deny list over an allow list: CPython's own needs vary by version and libc, and
# these are the calls that reach outside the process or change anything on disk.
DENIED_SYSCALLS = (
    # network and local sockets
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # processes, threads and programs
    "fork", "vfork", "clone", "clone3", "execve", "execveat",
    # other processes: tracing, memory, signals
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    # the machine: mounts, namespaces, modules, kexec, bpf, perf, keys, io_uring (which bypasses seccomp)
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "quotactl", "swapon", "swapoff", "acct", "syslog",
    # changing files
    "creat", "openat2", "truncate", "ftruncate", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "rmdir", "link", "linkat", "symlink", "symlinkat", "mknod", "mknodat", "chmod",
    "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "utime", "utimes", "utimensat",
    "futimesat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
)  # fmt: skip
_WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


def missing(applied: Sequence[str]) -> list[str]:
    """The layers of LAYERS not in `applied` (as a child reported them)."""
    return [layer for layer in LAYERS if layer not in applied]


class ConfinementError(RuntimeError):
    """A layer that is available could not be applied: the child must not serve."""


def enter_network_namespace() -> bool:
    """Move this process into a new, empty network namespace; False when not root (nothing applied)."""
    if os.geteuid() != 0:
        return False
    if _libc().unshare(_CLONE_NEWNET) != 0:
        raise ConfinementError(f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}")
    return True


def restrict_filesystem() -> bool:
    """Landlock: no filesystem access, no TCP, no signals out; False when the kernel has no Landlock."""
    abi = landlock_abi()
    if abi < 1:
        return False
    fs_rights = _FS_RIGHTS_BY_ABI[max(version for version in _FS_RIGHTS_BY_ABI if version <= abi)]
    net_rights = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    fields = [fs_rights] + ([net_rights] if abi >= 4 else []) + ([scoped] if abi >= 6 else [])
    attr = (ctypes.c_uint64 * len(fields))(*fields)
    libc = _libc()
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise ConfinementError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        _no_new_privileges()
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise ConfinementError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return True


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (too old, or not enabled at boot)."""
    version = _libc().syscall(
        _SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)
    )
    return max(int(version), 0)


def compile_seccomp() -> bytes | None:
    """The seccomp filter as a BPF program, compiled once (by the zygote, or a child before its rlimits:
    finding libseccomp runs ldconfig, a process); None when this machine has no libseccomp. It names no
    pid, so every child forked loads the same program."""
    try:
        import pyseccomp as seccomp  # here, not at the top: the parent, which only reads LAYERS, need not load it
    except (ImportError, OSError):
        return None
    denied = seccomp.ERRNO(errno.EPERM)
    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        syscall_filter.add_rule(denied, name)
    for flag in _WRITE_FLAGS:  # open(2) and openat(2) for writing; reading is Landlock's to refuse
        syscall_filter.add_rule(denied, "open", seccomp.Arg(1, seccomp.MASKED_EQ, flag, flag))
        syscall_filter.add_rule(denied, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, flag, flag))
    read_end, write_end = os.pipe()  # the program is a few KB: it fits in the pipe's buffer
    try:
        with os.fdopen(write_end, "wb") as exported:
            syscall_filter.export_bpf(exported)
        return _read_all(read_end)
    finally:
        os.close(read_end)


def filter_syscalls(program: bytes | None) -> bool:
    """Load the seccomp `program` (from `compile_seccomp`) into this process; False when there is none."""
    if program is None:
        return False
    _no_new_privileges()
    instructions = len(program) // ctypes.sizeof(_SockFilter)
    filters = (_SockFilter * instructions).from_buffer_copy(program)
    fprog = _SockFprog(instructions, filters)
    if _libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise ConfinementError(f"loading the seccomp filter failed: {os.strerror(ctypes.get_errno())}")
    return True


class _SockFilter(ctypes.Structure):  # struct sock_filter, one BPF instruction
    _fields_ = (("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):  # struct sock_fprog
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _no_new_privileges() -> None:
    """Required by Landlock and by seccomp for an unprivileged process; no setuid program can regain any."""
    if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
