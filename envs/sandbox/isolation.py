"""What locks a sandboxed run down: the Linux calls (unshare, mount) and flags, and the report of which
mechanisms are in force. Imported by the fork server by its bare name."""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_REC, MS_PRIVATE, MNT_DETACH = 0x2, 0x4, 0x20, 0x4000, 0x40000, 0x2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
_libc = ctypes.CDLL(None, use_errno=True)


def _isolation(namespaces: bool) -> dict:
    """Which mechanisms are in force; decided once, reported with every result."""
    root = os.geteuid() == 0
    if root and namespaces and _libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) == 0:
        ipc = "private IPC namespace where no SysV or POSIX IPC object can be created"
        try:
            for path, value in (("kernel/shmmni", "0"), ("kernel/msgmni", "0"), ("kernel/sem", "0 0 0 0"),
                                ("fs/mqueue/queues_max", "0")):  # this IPC namespace's own limits
                with open(f"/proc/sys/{path}", "w") as f:
                    f.write(value)
        except OSError as e:
            ipc = f"private IPC namespace shared by all runs (its limits could not be zeroed: {e})"
        return {"mode": "namespaces",
                "network": "empty network namespace per run (no interfaces up, no abstract unix socket of "
                           "another run)",
                "filesystem": "chroot into a fresh size-capped tmpfs per run, in a private mount namespace; "
                              "nothing else visible",
                "processes": "fresh PID namespace per run (its PID 1 takes every process along) + RLIMIT_NPROC",
                "ipc": ipc, "user": "unprivileged uid per run, no capabilities, no_new_privs"}
    why = "namespaces switched off" if not namespaces else "not root" if not root else \
        f"unshare(CLONE_NEWNET | CLONE_NEWIPC) failed: {os.strerror(ctypes.get_errno())}"
    hook = "audit hook (Python-level: ctypes or a C extension can bypass it)"
    return {"mode": "weak", "why": why, "network": f"{hook} blocks socket creation",
            "filesystem": f"fresh scratch directory as cwd; {hook} blocks open() outside it; "
                          "the rest of the filesystem is not hidden",
            "processes": ("own process group and uid, every process of that uid killed after the run (a "
                          "setsid() escapee too)" if root else
                          "own process group, killed with the run (setsid() escapes it)") +
                         f"; {hook} blocks fork, exec, subprocess and kill; RLIMIT_NPROC",
            "ipc": "the host's IPC namespace: SysV and POSIX IPC objects can outlive the run",
            "user": "unprivileged uid per run, no_new_privs" if root else
                    "the trainer's own uid (not root: nothing to drop to), no_new_privs"}


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")


def _mount(source, target, fstype, flags, data=None) -> None:
    if _libc.mount(source, target, fstype, flags, data) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target!r}")


def _mount_tmpfs(path: str, size_mb: int, uid: int, flags: int = 0) -> None:
    opts = f"size={size_mb}m,nr_inodes=4096,mode=0700,uid={uid},gid={uid}".encode()
    _mount(b"tmpfs", path.encode(), b"tmpfs", flags | MS_NOSUID | MS_NODEV, opts)
