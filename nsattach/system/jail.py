"""The namespace jail: new namespaces for the master, and the privileged recipe that pivots it
into its root directory.

``open_namespaces`` forks the process that will be the jailed master: PID 1 of new mount, PID,
UTS and IPC namespaces (and a network namespace on request). ``build_jail`` is the recipe,
one readable list of named steps, run by that process:

    make / recursively private      (in the new mount namespace only: the host's propagation
                                     is never touched, unlike uWSGI, Q-N1)
    bind the root onto itself       (recursive: pivot_root needs a mount point)
    mount a fresh /proc             (the jail's PID namespace)
    [private /dev]                  (tmpfs, host nodes bound, a new devpts instance)
    keep-mounts                     (recursive binds, read-only when asked, Q-N5)
    pivot_root(".", ".")            (no temporary directory in the jail, so no crash leftovers
                                     can block the next start, Q-N2)
    detach the old root             (every host mount goes with it)
    chdir("/")
    verify                          (/proc/self/mountinfo: anything else left is an error)

Every step that fails raises JailError naming the step, the path, the errno and what to check.
``namespace = /`` means no pivot: the jail keeps its copy of every mount (Q-N8).
"""

from __future__ import annotations

import errno
import os
import posixpath
import socket
import stat
from dataclasses import dataclass
from typing import Callable, NoReturn

from nsattach.config.model import KeepMount, NamespacePlan
from nsattach.errors import SetupError
from nsattach.system import linux

PROC_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


class JailError(SetupError):
    """A step of the jail recipe failed."""

    def __init__(self, step: str, path: str, exc: OSError | None = None, hint: str = "",
                 message: str | None = None):
        self.step = step
        self.path = path
        self.errno = exc.errno if exc is not None else None
        reason = message or _errno_text(exc)
        text = f"jail: {step} {path}: {reason}"
        if hint:
            text += f" -- {hint}"
        super().__init__(text)


def _errno_text(exc: OSError | None) -> str:
    if exc is None:
        return "failed"
    code = exc.errno or 0
    return f"{os.strerror(code)} [{linux.errno_name(code)}]" if code else str(exc)


# --------------------------------------------------------------------------------------------
# /proc/self/mountinfo


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    root: str              # the path inside its filesystem that is mounted here
    mount_point: str
    options: str
    fstype: str
    source: str


def decode_mount_field(text: str) -> str:
    r"""Undo the kernel's octal escapes (``\040`` space, ``\011`` tab, ``\012`` newline,
    ``\134`` backslash); uWSGI compares the escaped text and misses such paths (Q-N5)."""
    if "\\" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        digits = raw[i + 1:i + 4]
        if raw[i] == 0x5C and len(digits) == 3 and all(0x30 <= b <= 0x37 for b in digits):
            out.append(int(digits, 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out).decode("utf-8", "surrogateescape")


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        entries.append(MountEntry(
            mount_id=int(fields[0]), parent_id=int(fields[1]), root=decode_mount_field(fields[3]),
            mount_point=decode_mount_field(fields[4]), options=fields[5],
            fstype=fields[sep + 1], source=decode_mount_field(fields[sep + 2]) if len(fields) > sep + 2 else ""))
    return entries


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def is_under(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it, compared by components."""
    if top == "/":
        return path.startswith("/")
    return path == top or path.startswith(top.rstrip("/") + "/")


def mounts_below(target: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points strictly below ``target``, deepest first (for a recursive umount)."""
    target = posixpath.normpath(target)
    points = {m.mount_point for m in read_mountinfo(mountinfo)
              if m.mount_point != target and is_under(m.mount_point, target)}
    return sorted(points, key=lambda p: (-p.count("/"), p))


# --------------------------------------------------------------------------------------------
# the process in the new namespaces


def namespace_flags(ns: NamespacePlan) -> int:
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWPID
    if ns.net:
        flags |= linux.CLONE_NEWNET
    return flags


def open_namespaces(ns: NamespacePlan, child: Callable[[], NoReturn]) -> int:
    """Fork the jailed master: PID 1 of new namespaces. Returns its (host) pid; in the new
    process ``child()`` runs and never returns.

    The caller must be a child subreaper and must have blocked every signal: an intermediate
    process unshares and forks (only the *next* fork after unshare(CLONE_NEWPID) is PID 1),
    reports the pid and exits, so the jailed master is re-parented to the caller. Failures of
    the intermediate come back as (step, errno) over a pipe and raise JailError.
    """
    r, w = os.pipe()
    netns_fd = -1
    if ns.netns:
        path = f"/run/netns/{ns.netns}"
        try:
            netns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(r)
            os.close(w)
            raise JailError("open network namespace", path, exc,
                            f"create it first (ip netns add {ns.netns}) or fix namespace-netns") from None
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (r, w, netns_fd):
            if fd >= 0:
                os.close(fd)
        raise JailError("fork", "", exc) from None
    if pid == 0:
        os.close(r)
        _intermediate(w, namespace_flags(ns), netns_fd, child)
    os.close(w)
    if netns_fd >= 0:
        os.close(netns_fd)
    data = b""
    while True:
        chunk = os.read(r, 256)
        if not chunk:
            break
        data += chunk
    os.close(r)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    words = data.split()
    if len(words) == 2 and words[0] == b"PID" and words[1].isdigit():
        return int(words[1])
    if len(words) == 3 and words[0] == b"ERR":
        step = words[1].decode()
        code = int(words[2]) if words[2].isdigit() else 0
        exc = OSError(code, os.strerror(code))
        hints = {
            "unshare": "nsattach must run as root; check that the kernel allows new namespaces "
                       "(user.max_*_namespaces sysctls, seccomp filters of a container)",
            "setns": "the named network namespace must exist and nsattach must run as root",
        }
        raise JailError(step, f"[flags {namespace_flags(ns):#x}]" if step == "unshare" else "",
                        exc, hints.get(step, ""))
    raise JailError("clone", "", message=f"the intermediate process ended without a report ({data[:60]!r})")


def _intermediate(w: int, flags: int, netns_fd: int, child: Callable[[], NoReturn]) -> NoReturn:
    step = "unshare"
    try:
        linux.unshare(flags)
        if netns_fd >= 0:
            step = "setns"
            linux.setns(netns_fd, linux.CLONE_NEWNET)
            os.close(netns_fd)
        step = "fork"
        pid = os.fork()
        if pid == 0:
            os.close(w)
            try:
                child()
            finally:
                os._exit(1)
        os.write(w, b"PID %d\n" % pid)
    except BaseException as exc:
        code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
        try:
            os.write(w, b"ERR %s %d\n" % (step.encode(), code))
        except OSError:
            pass
        os._exit(1)
    os._exit(0)


# --------------------------------------------------------------------------------------------
# the recipe


def _step(name: str, path: str, fn: Callable[[], object], hint: str | Callable[[OSError], str] = "") -> None:
    try:
        fn()
    except OSError as exc:
        text = hint(exc) if callable(hint) else hint
        raise JailError(name, path, exc, text) from None


def make_private() -> None:
    """Stop every mount event of this (new) mount namespace from reaching the host, and the
    host's from reaching it (Q-N1). Done first, before anything is mounted."""
    _step("make / recursively private", "/",
          lambda: linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE),
          "the process must be in its own mount namespace and run as root")


def set_hostname(name: str) -> None:
    _step("sethostname", name, lambda: socket.sethostname(name),
          "the jail needs its own UTS namespace (nsattach gives it one) and root")


def resolve_root(root: str) -> str:
    try:
        real = os.path.realpath(root, strict=True)
    except OSError as exc:
        raise JailError("check the jail directory", root, exc,
                        "create it and put a root filesystem in it (see docs/jail.md: a busybox "
                        "rootfs is enough)") from None
    if not os.path.isdir(real):
        raise JailError("check the jail directory", root, message="not a directory",
                        hint="namespace = DIR[:HOSTNAME] needs a directory")
    return real


def jail_path(root: str, inner: str, what: str) -> str:
    """``inner`` (absolute, inside the jail) as a host path under ``root``, refusing symlinks
    that would lead out of the jail (a bind there would land on the host's own directory)."""
    candidate = posixpath.join(root, inner.lstrip("/"))
    real = os.path.realpath(candidate)
    if not is_under(real, root):
        raise JailError(f"check {what}", inner, message=f"resolves to {real}, outside the jail {root}",
                        hint="a symlink in the jail points out of it; use a path inside the jail")
    return real


def build_jail(ns: NamespacePlan, log: Callable[..., None]) -> None:
    """The privileged recipe; runs as PID 1 of the new namespaces, after make_private()."""
    root = resolve_root(ns.root)
    if root == "/":
        _build_in_place(ns, log)
        return
    before = [m.mount_point for m in read_mountinfo() if m.mount_point != root and is_under(m.mount_point, root)]

    _step("bind the jail directory onto itself", root,
          lambda: linux.mount(root, root, None, linux.MS_BIND | linux.MS_REC),
          "pivot_root needs the jail directory to be a mount point")

    proc = jail_path(root, "/proc", "/proc")
    log("remounting /proc")
    _step("mount proc", proc, lambda: linux.mount("proc", proc, "proc", PROC_FLAGS),
          lambda e: f"create the directory: mkdir {proc}" if e.errno == errno.ENOENT else
          "the jail needs its own PID namespace and root")

    if ns.private_dev:
        _private_dev(root, log)

    for km in ns.keep_mounts:
        _keep_mount(root, km, log)

    def pivot() -> None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(fd)
        finally:
            os.close(fd)
        # new_root == put_old: the old root ends up stacked on top of the new one at "/",
        # and the umount2(".") below peels it off (pivot_root(2), NOTES). No directory in
        # the jail is needed, so nothing can be left over from a crash (Q-N2).
        linux.pivot_root(".", ".")

    _step("pivot_root", root, pivot,
          lambda e: "the jail directory must be on a filesystem that supports pivot_root (not the "
                    "initramfs); check that / is not shared in this mount namespace" if e.errno == errno.EINVAL
          else "nsattach must run as root")
    _step("detach the old root", "/", lambda: linux.umount2(".", linux.MNT_DETACH),
          "something still pins the old root")
    _step("chdir", "/", lambda: os.chdir("/"))

    allowed = ["/proc"] + [km.target for km in ns.keep_mounts]
    allowed += ["/" + posixpath.relpath(p, root) for p in before]
    if ns.private_dev:
        allowed.append("/dev")
    verify_mounts(allowed)


def verify_mounts(allowed: list[str]) -> None:
    """After the pivot the jail sees only its root, /proc, the keep-mounts (and what is mounted
    below them), a private /dev and what was already mounted below the jail directory: nothing
    of the host may be left. Fail loudly on anything else (uWSGI leaves busy mounts silently)."""
    try:
        entries = read_mountinfo()
    except OSError as exc:
        raise JailError("verify mounts", "/proc/self/mountinfo", exc) from None
    roots = [m for m in entries if m.mount_point == "/"]
    if len(roots) != 1:
        raise JailError("verify mounts", "/", message=f"{len(roots)} mounts on / after the pivot (the old root "
                        "was not detached)")
    stray = [m for m in entries if m.mount_point != "/" and not any(is_under(m.mount_point, a) for a in allowed)]
    if stray:
        listing = ", ".join(f"{m.mount_point} ({m.fstype} {m.source})" for m in stray[:5])
        raise JailError("verify mounts", "/", message=f"host mounts still visible in the jail: {listing}",
                        hint="please report this: the jail must only hold /, /proc and the keep-mounts")


def _keep_mount(root: str, km: KeepMount, log: Callable[..., None]) -> None:
    log(f"remounting {km.source} to {km.target}{' (read-only)' if km.readonly else ''}")
    what = f"keep-mount {km.source}"
    try:
        src_st = os.stat(km.source)
    except OSError as exc:
        raise JailError(f"{what}: check the host path", km.source, exc,
                        "namespace-keep-mount names a host path that must exist") from None
    target = jail_path(root, km.target, f"{what}: its target")
    try:
        dst_st = os.stat(target)
    except OSError as exc:
        kind = "mkdir -p" if stat.S_ISDIR(src_st.st_mode) else "touch"
        raise JailError(f"{what}: check the target in the jail", target, exc,
                        f"create it in the jail first: {kind} {target}") from None
    if stat.S_ISDIR(src_st.st_mode) != stat.S_ISDIR(dst_st.st_mode):
        raise JailError(f"{what}: check the target in the jail", target,
                        message="one of source and target is a directory and the other is not",
                        hint="bind a directory onto a directory and a file onto a file")
    _step(f"{what}: bind", target, lambda: linux.mount(km.source, target, None, linux.MS_BIND | linux.MS_REC))
    if km.readonly:
        _read_only(target, what)


def _read_only(target: str, what: str) -> None:
    """Remount the bind at ``target`` and every mount below it read-only (a plain remount would
    leave the submounts of a recursive bind writable)."""
    for point in [target] + list(reversed(mounts_below(target))):
        def remount(point=point) -> None:
            flags = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY
            st = os.statvfs(point)
            # keep the flags the source mount has: the kernel refuses to drop locked ones
            flags |= (linux.MS_NOSUID if st.f_flag & os.ST_NOSUID else 0)
            flags |= (linux.MS_NODEV if st.f_flag & os.ST_NODEV else 0)
            flags |= (linux.MS_NOEXEC if st.f_flag & os.ST_NOEXEC else 0)
            linux.mount(None, point, None, flags)
        _step(f"{what}: remount read-only", point, remount)


def _private_dev(root: str, log: Callable[..., None]) -> None:
    """A minimal /dev the jail owns: nothing of the host's /dev but the usual nodes, and a new
    devpts instance so the jail's ptys are its own."""
    dev = jail_path(root, "/dev", "/dev")
    log("mounting a private /dev")
    _step("private /dev: mount tmpfs", dev,
          lambda: linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755,size=1024k"),
          lambda e: f"create the directory: mkdir {dev}" if e.errno == errno.ENOENT else "")
    for name in DEV_NODES:
        host = f"/dev/{name}"
        if not os.path.exists(host):
            continue
        target = f"{dev}/{name}"

        def bind_node(host=host, target=target) -> None:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
            linux.mount(host, target, None, linux.MS_BIND)
        _step(f"private /dev: bind {host}", target, bind_node)
    pts = f"{dev}/pts"
    tty_gid = _jail_group_id(root, "tty")
    data = "newinstance,ptmxmode=0666,mode=0620" + (f",gid={tty_gid}" if tty_gid is not None else "")

    def devpts() -> None:
        os.mkdir(pts, 0o755)
        linux.mount("devpts", pts, "devpts", linux.MS_NOSUID | linux.MS_NOEXEC, data)
    _step("private /dev: mount a new devpts instance", pts, devpts,
          "the kernel needs devpts multi-instance support (CONFIG_DEVPTS_MULTIPLE_INSTANCES, always on since 4.7)")

    def links() -> None:
        os.symlink("pts/ptmx", f"{dev}/ptmx")
        os.symlink("/proc/self/fd", f"{dev}/fd")
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")
        os.mkdir(f"{dev}/shm", 0o1777)
        os.chmod(f"{dev}/shm", 0o1777)
    _step("private /dev: links and /dev/shm", dev, links)


def _jail_group_id(root: str, name: str) -> int | None:
    try:
        with open(posixpath.join(root, "etc/group"), encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) >= 3 and parts[0] == name and parts[2].isdigit():
                    return int(parts[2])
    except OSError:
        pass
    return None


def _build_in_place(ns: NamespacePlan, log: Callable[..., None]) -> None:
    """``namespace = /``: no pivot and nothing unmounted (uWSGI unmounts every other mount of
    the namespace, Q-N8); a fresh /proc for the new PID namespace, the optional private /dev
    and the keep-mounts that move something."""
    log("remounting /proc")
    _step("mount proc", "/proc", lambda: linux.mount("proc", "/proc", "proc", PROC_FLAGS))
    if ns.private_dev:
        _private_dev("/", log)
    for km in ns.keep_mounts:
        if km.source != km.target or km.readonly:
            _keep_mount("/", km, log)


def forward_signal(pidfd: int, signum: int) -> bool:
    """Signal the jailed master through its pidfd; False when it is gone."""
    try:
        linux.pidfd_send_signal(pidfd, signum)
        return True
    except ProcessLookupError:
        return False


__all__ = [
    "JailError", "MountEntry", "build_jail", "decode_mount_field", "forward_signal", "is_under",
    "jail_path", "make_private", "mounts_below", "namespace_flags", "open_namespaces",
    "parse_mountinfo", "read_mountinfo", "resolve_root", "set_hostname", "verify_mounts",
]
