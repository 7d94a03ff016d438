"""The seccomp filter of every sandboxed process: the system calls that model code never needs, refused.

libseccomp's Python API (`BINDINGS`) compiles the filter in the trainer's process (`compile_filters`); the fork
server loads the compiled program once (`install`), before it forks anything, so every runner, zygote and child
inherits it, and no process can remove a filter, only add one. Loading a filter per child would cost ~0.25 ms
of kernel time per run (the kernel compiles each one it attaches); inherited, it costs nothing. So the list
holds only what the trusted runner and zygote never call either: the calls they do need (mount, umount2,
unshare, setns, chroot, to build each run's namespaces and tmpfs) are refused to a child by the kernel
instead, since it holds no capability (`isolation.py`); in weak mode, where nothing needs them, the filter
refuses them too. The fork server imports the binding never (it would pull `subprocess` and `threading` into
every child, see forkserver.ON_DEMAND) and this module by its bare name.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

BINDINGS = ("seccomp", "pyseccomp")  # Debian's python3-seccomp, then the same API from PyPI over ctypes
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2

# Each group: the calls, and why no run may make them. All fail with EPERM.
DENIED = {
    "kernel keyrings (a run inherits the trainer's session keyring: it could read its keys and leave its own)":
        ("keyctl", "add_key", "request_key"),
    "other processes' memory and files (processes of the same uid are fair game without it)":
        ("ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd"),
    "sockets of any family, through ctypes too (a run talks to its runner over pipes it inherits; "
    "socketpair() stays, AF_UNIX only: a pair connects a process to itself)":
        ("socket",),
    "SysV IPC and POSIX message queues (objects that outlive a run, or that runs sharing an IPC namespace share)":
        ("shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
         "semctl", "mq_open"),
    "the new mount API and pivot_root (nothing uses them)":
        ("fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "pivot_root"),
    "kernel attack surface no run needs (io_uring would also carry socket and open calls past this filter)":
        ("bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register"),
    "the machine itself (each needs a capability a run lacks; refused outright all the same)":
        ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
         "swapoff", "acct", "iopl", "ioperm", "syslog", "quotactl", "open_by_handle_at", "name_to_handle_at",
         "fanotify_init", "lookup_dcookie"),
}
# Only weak mode's trusted parts never build namespaces or mounts; there a run may not either.
WEAK_ONLY = ("mount", "umount2", "unshare", "setns", "chroot")
# clone() with any of these makes a namespace (CLONE_NEWUSER would give a run every capability in a new user
# namespace); clone3() passes its flags in memory, which a filter cannot read: it fails with ENOSYS, and the C
# library falls back to clone(), whose flags the filter sees.
CLONE_NEW = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
             "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
             "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080}
AF_UNIX = 1


@functools.cache
def compile_filters() -> dict:
    """{"binding": its name, "namespaces": program, "weak": program} (each a hex string of BPF), or
    {"missing": why} when no binding can be loaded here; the trainer's process compiles them once."""
    seccomp, why = None, "neither python3-seccomp nor pyseccomp is installed"
    for name in BINDINGS:
        try:
            seccomp = __import__(name)
            break
        except ImportError:
            continue
        except OSError as e:  # pyseccomp without libseccomp.so.2
            why = f"{name} failed to load: {e}"
    if seccomp is None:
        return {"missing": why}
    return {"binding": seccomp.__name__, "namespaces": _compile(seccomp, True), "weak": _compile(seccomp, False)}


def _compile(seccomp, strong: bool) -> str:
    deny = seccomp.ERRNO(errno.EPERM)
    filt = seccomp.SyscallFilter(seccomp.ALLOW)  # other architectures' calls (x32, i386) kill: the library's default
    for name in [name for names in DENIED.values() for name in names] + ([] if strong else list(WEAK_ONLY)):
        try:
            filt.add_rule(deny, name)
        except (ValueError, OSError):  # a call this libseccomp does not know (an older one's): nothing to refuse
            continue
    filt.add_rule(deny, "socketpair", seccomp.Arg(0, seccomp.NE, AF_UNIX))
    for bit in CLONE_NEW.values():
        filt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb") as f:
            filt.export_bpf(f)  # ~700 bytes: well within a pipe's buffer
        return os.read(read, 1 << 20).hex()
    finally:
        os.close(read)


class _Program(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def install(filters: dict, strong: bool) -> str:
    """Load the compiled filter into this process (and so into all it forks); what it refuses, for the
    isolation report. Without one the report says so, loudly: the runs go on without it, never silently."""
    if "missing" in filters:
        return (f"NO seccomp filter ({filters['missing']}): keyctl (the trainer's keyring), socket() through "
                "ctypes, ptrace and io_uring are NOT refused")
    program = bytes.fromhex(filters["namespaces" if strong else "weak"])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_Program(len(program) // 8, program)), 0, 0):
        raise OSError(ctypes.get_errno(), "loading the sandbox's seccomp filter")  # no_new_privs is set first
    groups = [g.split(" (")[0] for g in DENIED] + ["new namespaces through clone()"]
    kept = ("mount, umount2, unshare, setns and chroot are left to the kernel, which refuses them to a run for "
            "lack of capabilities") if strong else "so are mount, umount2, unshare, setns and chroot"
    return f"seccomp filter ({filters['binding']}) refuses with EPERM: {'; '.join(groups)}; {kept}"
