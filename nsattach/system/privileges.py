"""The master's own privileges: ``unshare`` without a jail, and the uid/gid drop.

Each is done once per start (uWSGI runs its privilege-drop routine up to four times, Q-M1),
and every drop is verified with the kernel's view (getresuid/getresgid/getgroups) before
anything runs as the new user.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

from nsattach.config.model import Identity
from nsattach.errors import SetupError
from nsattach.system import linux

# uWSGI's names (uwsgi-spec §4.1); io, parent and user are refused when the plan is built
UNSHARE_FLAGS: dict[str, int] = {
    "files": linux.CLONE_FILES,
    "fs": linux.CLONE_NEWNS,        # uWSGI maps fs to CLONE_NEWNS too, not CLONE_FS
    "ns": linux.CLONE_NEWNS,
    "mount": linux.CLONE_NEWNS,
    "mnt": linux.CLONE_NEWNS,
    "ipc": linux.CLONE_NEWIPC,
    "net": linux.CLONE_NEWNET,
    "pid": linux.CLONE_NEWPID,
    "sysvsem": linux.CLONE_SYSVSEM,
    "uts": linux.CLONE_NEWUTS,
    "io": linux.CLONE_IO,
    "parent": linux.CLONE_PARENT,
    "user": linux.CLONE_NEWUSER,
}

# what the outer half of ``unshare = pid`` passes on to the master inside
RELAYED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                             signal.SIGUSR1, signal.SIGUSR2})


def _errno_text(exc: OSError) -> str:
    code = exc.errno or 0
    return f"{os.strerror(code)} [{linux.errno_name(code)}]" if code else str(exc)


def unshare_flags(names: tuple[str, ...] | list[str]) -> int:
    flags = 0
    for name in names:
        flags |= UNSHARE_FLAGS[name]
    return flags


def apply_unshare(names: tuple[str, ...], log: Callable[[str], None]) -> int:
    """unshare() the master (uwsgi-spec §3.2 step 1); returns the flags used.

    The PID namespace only applies to children: the caller must fork once afterwards
    (``refork_into_pid_namespace``), Q-N10. A new mount namespace is made recursively
    private at once, so nothing mounted by hooks propagates back to the host (Q-N1).
    """
    flags = unshare_flags(names)
    try:
        linux.unshare(flags)
    except OSError as exc:
        raise SetupError(f"unshare({', '.join(names)}) [flags {flags:#x}]: {_errno_text(exc)} "
                         "(nsattach must run as root, and the kernel must support these namespaces)") from None
    log(f"[linux-namespace] applied unshare() mask: {flags}")
    if flags & linux.CLONE_NEWNS:
        try:
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        except OSError as exc:
            raise SetupError(f"unshare: making / recursively private in the new mount namespace: "
                             f"{_errno_text(exc)}") from None
    return flags


def refork_into_pid_namespace(log: Callable[[str], None], on_child: Callable[[], None]) -> int | None:
    """After unshare(CLONE_NEWPID): fork the master that will be PID 1 of the new namespace.

    Returns None in the child (which goes on as the master). The parent stays outside,
    relays stop/reload signals to it and returns its wait status once it has ended; every
    signal is blocked across the fork so none is lost. ``on_child`` runs in the child with
    all signals still blocked (to install its own handlers before they open again).
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, linux.CATCHABLE_SIGNALS)
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise SetupError(f"fork() into the new PID namespace: {_errno_text(exc)}") from None
    if pid == 0:
        try:
            linux.set_pdeathsig(signal.SIGKILL)     # the master dies with the process outside
            on_child()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
        return None
    log(f"master runs as PID 1 of a new PID namespace (host pid: {pid}); this process (pid: {os.getpid()}) "
        "relays signals to it")
    status = linux.relay_until_exit(pid, RELAYED_SIGNALS)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return status


def groups_for(identity: Identity) -> tuple[int, ...]:
    """The supplementary groups the master ends with (initgroups semantics)."""
    if identity.groups is not None:
        return tuple(identity.groups)
    gid = identity.gid if identity.gid is not None else os.getgid()
    if identity.user is not None:
        try:
            return tuple(os.getgrouplist(identity.user, gid))
        except OSError as exc:
            raise SetupError(f"getgrouplist({identity.user}, {gid}): {_errno_text(exc)}") from None
    return (gid,)


def drop_privileges(identity: Identity, log: Callable[[str], None]) -> None:
    """setgid → setgroups → setuid, then check that the kernel agrees (getres[ug]id, getgroups).

    ``uid = 0`` / ``gid = 0`` are real values (uWSGI looks them up as names, Q-M2). Without any
    uid/gid the master stays as it is and says so, once.
    """
    if not identity.changes_anything:
        if os.geteuid() == 0:
            log("*** WARNING: you are running nsattach as root !!! (use the uid option) ***")
        return
    groups = groups_for(identity)
    step, obj = "setgid", str(identity.gid)
    try:
        if identity.gid is not None:
            os.setgid(identity.gid)
            log(f"setgid() to {identity.gid}")
        step, obj = "setgroups", str(list(groups))
        os.setgroups(list(groups))
        log(f"set additional groups to {', '.join(map(str, groups)) or '(none)'}")
        if identity.uid is not None:
            step, obj = "setuid", str(identity.uid)
            os.setuid(identity.uid)
            log(f"setuid() to {identity.uid}")
    except OSError as exc:
        raise SetupError(f"dropping privileges: {step}({obj}): {_errno_text(exc)}") from None
    verify_identity(identity, groups)
    if identity.user is not None:
        os.environ["USER"] = os.environ["LOGNAME"] = identity.user
        if identity.home:
            os.environ["HOME"] = identity.home


def verify_identity(identity: Identity, groups: tuple[int, ...]) -> None:
    """Refuse to go on when a drop did not take (the kernel's view, not ours)."""
    if identity.gid is not None and os.getresgid() != (identity.gid,) * 3:
        raise SetupError(f"setgid({identity.gid}) did not take: getresgid() = {os.getresgid()}")
    if set(os.getgroups()) != set(groups):
        raise SetupError(f"setgroups({list(groups)}) did not take: getgroups() = {os.getgroups()}")
    if identity.uid is not None and os.getresuid() != (identity.uid,) * 3:
        raise SetupError(f"setuid({identity.uid}) did not take: getresuid() = {os.getresuid()}")
