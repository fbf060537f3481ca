"""The rig for the privileged tests: a busybox root filesystem, a real nsattach run with a
deadline on every wait, and the kernel's view of a process (namespaces, ids, environment).

Every process a test starts is recorded with its start time and killed at teardown only if
it is still that same process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


NS_TYPES = ("mnt", "pid", "uts", "ipc", "net")


def ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def environ(pid: int) -> dict[str, str]:
    data = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in data if b"=" in item)


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


def host_links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def host_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


# --- the root filesystem ----------------------------------------------------------------------

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/sh
nsauser:x:4242:4242:nsattach test user:/home/nsauser:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
"""
GROUP = """\
root:x:0:
tty:x:5:
www-data:x:33:
nsagroup:x:4242:
nsaextra:x:4343:nsauser
nogroup:x:65534:
"""


def build_rootfs(root: Path, *, dev_nodes: bool = True) -> Path:
    """A minimal busybox root filesystem (recipes.md §3, §5): /bin with busybox and its applets,
    /etc/passwd and /etc/group, /proc, /tmp, /root (0700), an empty /usr to keep-mount the host's
    onto, lib -> usr/lib and lib64 -> usr/lib64 for dynamically linked host programs (dropbear),
    and with ``dev_nodes`` the device nodes daemons need (null, zero, random, urandom)."""
    for d in ("bin", "etc", "proc", "dev", "tmp", "usr", "var/www", "home/nsauser", "shared"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "root").mkdir(mode=0o700, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s", "/bin"], check=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    os.chown(root / "home/nsauser", 4242, 4242)
    for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")):
        os.symlink(target, root / link)
    if dev_nodes:
        for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
            os.mknod(root / "dev" / name, 0o666 | 0o020000, os.makedev(1, minor))
            os.chmod(root / "dev" / name, 0o666)
    return root


# --- a running nsattach -----------------------------------------------------------------------

def in_netns(name: str, *argv: str, timeout: float = 10, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                          timeout=timeout, **kw)
