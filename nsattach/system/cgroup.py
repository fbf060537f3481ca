"""One cgroup per daemon, so every process a daemon ever forked can be found and killed.

A process group or a session can be left (setsid); a cgroup cannot, except by a process
with the right to write to another cgroup's cgroup.procs. So each dumb and legion daemon
joins its own cgroup before exec (the child writes "0" into an already opened
``cgroup.procs``), and stopping a daemon means emptying its cgroup. The cgroups survive a
master killed with SIGKILL: the next nsattach on the same configuration finds whatever is
left in them and stops it before starting anything.

Where: a cgroup2 hierarchy if the kernel has one mounted (``cgroup.kill`` kills a whole
cgroup at once, fork storms included), else a v1 hierarchy (the ``pids`` controller's,
membership only: killing repeats until the cgroup is empty). Under it, everything lives in
``nsattach/<instance>/<daemon>``, where the instance is named after the configuration file.
Smart daemons are deliberately not put in a cgroup: they outlive nsattach by design.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal

KILL_ROUNDS = 20        # v1 has no cgroup.kill: kill what is there, look again, a bounded number of times
NAME_RE = re.compile(r"[^A-Za-z0-9._@+-]")


def _decode_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def find_hierarchy(mountinfo: str = "/proc/self/mountinfo") -> tuple[str, int] | None:
    """(mount point, version) of the cgroup2 hierarchy, else of the v1 ``pids`` one."""
    v1 = None
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        point, fstype, options = _decode_mountinfo(fields[4]), rfields[0], rfields[2]
        if fstype == "cgroup2":
            return point, 2
        if fstype == "cgroup" and "pids" in options.split(","):
            v1 = (point, 1)
    return v1


def instance_name(config_files: tuple[str, ...] | list[str]) -> str:
    """A stable name for one configuration: its file name plus a hash of the full path."""
    key = "\0".join(os.path.abspath(f) for f in config_files) or "command-line"
    stem = os.path.splitext(os.path.basename(config_files[0]))[0] if config_files else "nsattach"
    return f"{NAME_RE.sub('_', stem)[:40]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


class Cgroups:
    def __init__(self, mount: str, version: int, instance: str):
        self.version = version
        self.base = os.path.join(mount, "nsattach", instance)

    @classmethod
    def detect(cls, instance: str) -> "Cgroups | None":
        found = find_hierarchy()
        if found is None:
            return None
        cg = cls(found[0], found[1], instance)
        try:
            os.makedirs(cg.base, exist_ok=True)
        except OSError:
            return None          # read-only or not ours: fall back to sessions
        return cg

    def path(self, name: str) -> str:
        return os.path.join(self.base, NAME_RE.sub("_", name))

    def procs_fd(self, name: str) -> int:
        """An fd on the daemon's cgroup.procs for the child to write "0" into before exec."""
        path = self.path(name)
        os.makedirs(path, exist_ok=True)
        return os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)

    def members(self, name: str) -> list[int]:
        return self._read_procs(self.path(name))

    @staticmethod
    def _read_procs(path: str) -> list[int]:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            return []

    def kill(self, name: str, signum: int = signal.SIGKILL) -> list[int]:
        """Signal every process in the daemon's cgroup; returns who was there."""
        path = self.path(name)
        pids = self._read_procs(path)
        if not pids:
            return []
        if signum == signal.SIGKILL and self.version == 2:
            try:
                with open(os.path.join(path, "cgroup.kill"), "w") as f:
                    f.write("1")
                return pids
            except OSError:
                pass         # a kernel before 5.14: kill one by one
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return pids

    def remove(self, name: str) -> None:
        try:
            os.rmdir(self.path(name))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                raise

    def remove_instance(self) -> None:
        """At a clean exit: the instance's own directory, once its daemons' are gone."""
        try:
            os.rmdir(self.base)
        except OSError:
            pass         # a daemon cgroup still holds something: the next start sweeps it

    def clear(self) -> None:
        """Kill whatever is left in every daemon cgroup of the instance and remove them all
        (used by tests after killing a master; a running master does this per daemon)."""
        try:
            names = [n for n in os.listdir(self.base) if os.path.isdir(os.path.join(self.base, n))]
        except OSError:
            return
        for name in names:
            self.sweep(name)
            self.remove(name)
        self.remove_instance()

    def leftovers(self) -> dict[str, list[int]]:
        """Daemon cgroups of this instance that still hold processes (a master killed hard)."""
        found = {}
        try:
            names = os.listdir(self.base)
        except OSError:
            return found
        for name in names:
            path = os.path.join(self.base, name)
            if os.path.isdir(path):
                pids = self._read_procs(path)
                if pids:
                    found[name] = pids
        return found

    def sweep(self, name: str) -> bool:
        """SIGKILL until the cgroup is empty (bounded); True when it is."""
        for _ in range(KILL_ROUNDS):
            if not self.kill(name, signal.SIGKILL):
                return True
            _wait_briefly()
        return not self.members(name)


def _wait_briefly() -> None:
    import time

    time.sleep(0.01)     # SIGKILLed processes need a moment to leave cgroup.procs
