"""Landlock for weak-mode runs: the kernel, not the audit hook, keeps a run's files inside its scratch folder.

Weak mode has no chroot: without this a run could read whatever its uid can (the trainer's files,
/proc/<pid>/environ of the trainer's processes) and create files, folders, symlinks and fifos anywhere its
uid may write (/tmp), through ctypes past the audit hook. Landlock is three system calls, made here through
ctypes (there is no maintained Python binding; the ABI is small and stable): a ruleset that handles every
filesystem right the kernel knows, one rule granting them all beneath the scratch folder, and the
restriction of the calling process, inherited by all it forks. Where the kernel's Landlock knows them, TCP
bind/connect (ABI 4) and signals and abstract unix sockets reaching outside the run (ABI 6) are refused too.
Imported by the fork server and the child by its bare name.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446  # the same number on every architecture
RULE_PATH_BENEATH, CREATE_RULESET_VERSION = 1, 1
# Filesystem rights by the ABI that introduced them: v1 has 13 (execute ... make_sym), v2 adds refer,
# v3 truncate, v5 ioctl_dev.
FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2


class _Ruleset(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi() -> int:
    """The kernel's Landlock ABI version; 0 where it has none (too old, or Landlock not enabled)."""
    version = _libc.syscall(CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    return max(version, 0)


def describe(version: int) -> str:
    if not version:
        return ""
    return (f"Landlock (ABI {version}): files only beneath the scratch folder"
            + ("; no TCP bind or connect" if version >= 4 else "")
            + ("; no signal or abstract unix socket reaching outside the run" if version >= 6 else ""))


def restrict_to(folder: str, version: int) -> None:
    """Confine this process and all it forks to `folder` (see the module's doc); raises where the kernel refuses."""
    fs = FS_RIGHTS[min(version, 5)]
    ruleset = _Ruleset(fs, NET_BIND_TCP | NET_CONNECT_TCP if version >= 4 else 0,
                       SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0)
    size = 8 if version < 4 else 16 if version < 6 else 24  # the struct as this ABI knows it
    fd = _libc.syscall(CREATE_RULESET, ctypes.byref(ruleset), size, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        beneath = os.open(folder, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = _PathBeneath(fs, beneath)
            if _libc.syscall(ADD_RULE, fd, RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_add_rule")
        finally:
            os.close(beneath)
        if _libc.syscall(RESTRICT_SELF, fd, 0) != 0:  # needs no_new_privs, which the fork server set
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(fd)
