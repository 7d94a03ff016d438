"""What locks a sandboxed run down: the Linux calls (unshare, mount) and flags, and the report of which
mechanisms are in force. Imported by the fork server by its bare name."""

from __future__ import annotations

import ctypes
import os

import landlock
from landlock import describe

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_REC, MS_PRIVATE, MNT_DETACH = 0x2, 0x4, 0x20, 0x4000, 0x40000, 0x2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
_libc = ctypes.CDLL(None, use_errno=True)


def _isolation(namespaces: bool) -> dict:
    """Which mechanisms are in force; decided once, reported with every result.

    Not root, this process first enters a user namespace of its own (`_enter_user_namespace`), and with it
    builds the same namespaces root would; only where the kernel refuses that is the mode weak."""
    root = os.geteuid() == 0
    refused = None if root or not namespaces else _enter_user_namespace()
    if namespaces and not refused and _libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) == 0:
        ipc = "private IPC namespace where no SysV or POSIX IPC object can be created"
        try:
            for path, value in (("kernel/shmmni", "0"), ("kernel/msgmni", "0"), ("kernel/sem", "0 0 0 0"),
                                ("fs/mqueue/queues_max", "0")):  # this IPC namespace's own limits
                with open(f"/proc/sys/{path}", "w") as f:
                    f.write(value)
        except OSError as e:
            ipc = f"private IPC namespace shared by all runs (its limits could not be zeroed: {e})"
        user = "unprivileged uid per run, no capabilities, no_new_privs" if root else \
            ("a user namespace per run in which the trainer's uid is the only one (not root: no other uid to drop "
             "to; other processes of that uid are out of sight and reach), no capabilities, no_new_privs")
        return {"mode": "namespaces",
                "network": "empty network namespace per run (no interfaces up, no abstract unix socket of "
                           "another run)",
                "filesystem": "chroot into a fresh size-capped tmpfs per run, in a private mount namespace; "
                              "nothing else visible",
                "processes": "fresh PID namespace per run (its PID 1 takes every process along) + RLIMIT_NPROC",
                "ipc": ipc, "user": user}
    why = "namespaces switched off" if not namespaces else refused or \
        f"unshare(CLONE_NEWNET | CLONE_NEWIPC) failed: {os.strerror(ctypes.get_errno())}"
    return _weak(why, root)


def _weak(why: str, root: bool) -> dict:
    """Weak mode's report, with what it leaves open ("not_protected": the sandbox warns of it, once, loudly)."""
    hook = "audit hook (Python-level: ctypes or a C extension can bypass it)"
    version = landlock.abi()
    fenced = describe(version)
    gaps = ["filling the disk: no size-capped scratch, only RLIMIT_FSIZE per file"]
    if not fenced:
        gaps = ["reading what the trainer's uid can read (its files, /proc/<pid>/environ)",
                ("writing outside the scratch folder where that uid may (mkdir, symlink, mkfifo, symlink races: "
                 "the audit hook sees only open())")] + gaps
    if version < 6:
        gaps.append("signalling processes of the run's uid outside the run" + ("" if root else " (the trainer's)"))
    return {"mode": "weak", "why": why, "landlock": version,
            "network": f"{hook} blocks socket creation" + (f"; {fenced}" if fenced else ""),
            "filesystem": f"fresh scratch directory as cwd; {hook} blocks open() outside it; " +
                          (f"{fenced}" if fenced else "the rest of the filesystem is not hidden"),
            "processes": ("own process group and uid, every process of that uid killed after the run (a "
                          "setsid() escapee too)" if root else
                          "own process group, killed with the run (setsid() escapes it)") +
                         f"; {hook} blocks fork, exec, subprocess and kill; RLIMIT_NPROC",
            "ipc": "the host's IPC namespace: SysV and POSIX IPC objects can outlive the run",
            "user": "unprivileged uid per run, no_new_privs" if root else
                    "the trainer's own uid (not root: nothing to drop to), no_new_privs",
            "not_protected": gaps}


def _enter_user_namespace() -> str | None:
    """Not root: enter a new user namespace where this process keeps its uid and gid (the only ones mapped) and
    holds every capability over the namespaces it makes below (not over anything outside); None, or why not."""
    ids = os.getuid(), os.getgid()  # read first: inside, before the map is written, they read as 65534
    if _libc.unshare(CLONE_NEWUSER) != 0:
        return f"not root, and unshare(CLONE_NEWUSER) failed: {os.strerror(ctypes.get_errno())}"
    try:
        _map_own_ids(*ids)
    except OSError as e:
        return f"not root, and the new user namespace's uid map could not be written: {e}"
    return None


def _map_own_ids(uid: int, gid: int) -> None:
    """Map this process's own uid and gid (those it had in the parent user namespace) into its new user
    namespace: the one mapping an unprivileged process may write."""
    for name, line in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(line)


class _CapHeader(ctypes.Structure):  # struct __user_cap_header_struct
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def _drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable sets (any process may lower its own). A run in a user
    namespace of its own holds them all there; CAP_SYS_CHROOT alone would let it walk out of its chroot."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
    if _libc.capset(ctypes.byref(header), (ctypes.c_uint32 * 6)()) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")


def _mount(source, target, fstype, flags, data=None) -> None:
    if _libc.mount(source, target, fstype, flags, data) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target!r}")


def _mount_tmpfs(path: str, size_mb: int, uid: int | None, flags: int = 0) -> None:
    """The run's scratch, owned by its uid (None or -1: not root, so our own ids)."""
    uid, gid = (os.getuid(), os.getgid()) if uid is None or uid < 0 else (uid, uid)
    opts = f"size={size_mb}m,nr_inodes=4096,mode=0700,uid={uid},gid={gid}".encode()
    _mount(b"tmpfs", path.encode(), b"tmpfs", flags | MS_NOSUID | MS_NODEV, opts)
