"""The frozen, typed plan that a configuration becomes.

Nothing here does I/O. Everything the runtime needs is resolved before a Plan exists: user and
group names are numbers, signals are numbers, pidfiles are absolute. The runtime acts on a
Plan and never looks at the ini text again.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field

from nsattach.errors import Origin

DEFAULT_RELOAD_MERCY_S = 3          # uWSGI: reload-mercy 0/unset -> 3 s per daemon
DEFAULT_PIDFILE_FREQ = 10           # uWSGI: 1-second pidfile checks to wait after a spawn
DEFAULT_MAX_THROTTLE_S = 300        # uWSGI: throttle cap when max_throttle is 0


class DaemonKind(enum.Enum):
    """How a daemon is tracked."""

    DUMB = "dumb"        # foreground child of the master, stopped with it
    SMART = "smart"      # daemonizes itself and writes a pidfile; survives the master
    SMART2 = "smart2"    # the master daemonizes it and writes its pidfile; survives the master


@dataclass(frozen=True)
class Identity:
    """A resolved account a process runs as. ``None`` fields mean "leave as the master has it"."""

    uid: int | None = None
    gid: int | None = None
    user: str | None = None        # login name, for initgroups and USER/LOGNAME
    home: str | None = None        # for HOME
    groups: tuple[int, ...] | None = None   # supplementary groups; None = derive from user/gid

    @property
    def changes_anything(self) -> bool:
        return self.uid is not None or self.gid is not None

    def describe(self) -> str:
        if not self.changes_anything:
            return "inherit"
        uid = "-" if self.uid is None else (f"{self.uid}" + (f"({self.user})" if self.user else ""))
        gid = "-" if self.gid is None else str(self.gid)
        return f"uid={uid} gid={gid}"


@dataclass(frozen=True)
class DaemonPlan:
    """One supervised daemon, exactly as the runtime will run it."""

    name: str                       # unique, human-friendly (memcached, memcached-2, or name=)
    command: str                    # shell command, run as ``/bin/sh -c``
    kind: DaemonKind
    option: str                     # the option that declared it (attach-daemon, attach-daemon2, ...)
    origin: Origin
    pidfile: str | None = None      # absolute; set for SMART and SMART2
    freq: int = DEFAULT_PIDFILE_FREQ
    control: bool = False           # its death stops the whole instance (dumb daemons only)
    stop_signal: int = int(signal.SIGTERM)
    reload_signal: int | None = None   # None: use stop_signal when the master reloads
    identity: Identity = field(default_factory=Identity)
    honour_stdin: bool = False
    touch: tuple[str, ...] = ()
    legion: str | None = None
    ns_pid: bool = False
    chdir: str | None = None
    max_throttle: int = DEFAULT_MAX_THROTTLE_S
    notifypid: bool = False
    output: str = "inherit"         # inherit, tag, or an absolute file path

    @property
    def is_smart(self) -> bool:
        return self.kind is not DaemonKind.DUMB

    @property
    def effective_reload_signal(self) -> int:
        return self.reload_signal if self.reload_signal else self.stop_signal


@dataclass(frozen=True)
class KeepMount:
    source: str                     # host path
    target: str                     # path inside the jail
    readonly: bool = False
    origin: Origin | None = None


@dataclass(frozen=True)
class VethPlan:
    """A veth pair between the host (the monitor's network namespace) and the jail."""

    host_ifname: str
    jail_ifname: str
    jail_address: str | None = None     # ADDR/PREFIX on the jail end
    host_address: str | None = None     # ADDR/PREFIX on the host end
    gateway: str | None = None          # default route inside the jail


@dataclass(frozen=True)
class NamespacePlan:
    root: str                       # absolute directory to pivot into ("/" = no pivot)
    hostname: str | None
    keep_mounts: tuple[KeepMount, ...] = ()
    net: bool = False               # a new network namespace (loopback brought up)
    origin: Origin | None = None
    value: str = ""                 # the option's value as written (for the log)
    private_dev: bool = False       # a private /dev: tmpfs, host nodes bound, own devpts
    veth: VethPlan | None = None
    netns: str | None = None        # join this named network namespace (/run/netns/NAME)


@dataclass(frozen=True)
class HookPlan:
    """One hook entry: ``family`` is hook/exec/mount/umount, ``phase`` the uWSGI phase name."""

    phase: str
    family: str
    value: str
    option: str
    origin: Origin


@dataclass(frozen=True)
class LegionNodePlan:
    address: str                    # host:port as written
    origin: Origin


@dataclass(frozen=True)
class LegionActionPlan:
    event: str                      # setup, join, lord, unlord, death, node-joined, node-left
    action: str                     # cmd, exec, log
    argument: str
    origin: Origin


@dataclass(frozen=True)
class LegionPlan:
    name: str
    address: str                    # ip:port to bind
    valor: int
    cipher: str                     # normalised OpenSSL name, e.g. aes-128-cbc
    secret: str
    iv: str | None
    multicast: bool                 # declared with legion-mcast: the address is also a destination
    origin: Origin
    nodes: tuple[LegionNodePlan, ...] = ()
    quorum: int = 0
    scroll: str | None = None
    actions: tuple[LegionActionPlan, ...] = ()


@dataclass(frozen=True)
class LegionSettings:
    freq: int = 3
    tolerance: int = 15
    skew_tolerance: int = 60
    death_on_lord_error: int = 0
    scroll_max_size: int = 4096
    scroll_list_max_size: int = 32768
    multicast_ttl: int = 1
    multicast_loop: bool = True
    lord_delay: int = 0          # seconds a new lord waits before starting its legion daemons


@dataclass(frozen=True)
class EtcdLegionPlan:
    """A legion whose membership and lordship live in etcd (``legion-etcd``) instead of UDP
    announcements: see nsattach.legion.etcd for the election and the lease safety math."""

    name: str
    endpoints: tuple[str, ...]      # http(s)://host:port, as written
    valor: int
    origin: Origin
    ttl: int                        # lease TTL in seconds (legion-etcd-ttl, or the default)
    reload_mercy: int               # the master's reload-mercy, copied for the lease math
    prefix: str = "/nsattach/legion/"
    cacert: str | None = None       # TLS: CA bundle to verify the members with (default: system CAs)
    cert: str | None = None         # TLS: client certificate (and key, if key is None)
    key: str | None = None
    user: str | None = None         # etcd authentication (legion-etcd-user USER:PASSWORD)
    password: str | None = None
    scroll: str | None = None
    actions: tuple[LegionActionPlan, ...] = ()


@dataclass(frozen=True)
class MasterPlan:
    identity: Identity = field(default_factory=Identity)
    pidfile: str | None = None
    reload_mercy: int = DEFAULT_RELOAD_MERCY_S
    touch_reload: tuple[str, ...] = ()
    master_fifo: tuple[str, ...] = ()
    logto: str | None = None
    chdir: str | None = None
    vacuum: bool = False
    daemons_honour_stdin: bool = False
    binsh: str = "/bin/sh"
    env: tuple[tuple[str, str], ...] = ()
    unenv: tuple[str, ...] = ()
    unshare: tuple[str, ...] = ()
    control_socket: str | None = None      # None: no control socket
    control_group: int | None = None


@dataclass(frozen=True)
class Plan:
    """Everything nsattach will do, resolved and validated."""

    config_files: tuple[str, ...]
    master: MasterPlan
    daemons: tuple[DaemonPlan, ...]
    namespace: NamespacePlan | None = None
    hooks: tuple[HookPlan, ...] = ()
    legions: tuple[LegionPlan, ...] = ()
    legion_settings: LegionSettings = field(default_factory=LegionSettings)
    etcd_legions: tuple[EtcdLegionPlan, ...] = ()
    ignored_options: tuple[str, ...] = ()   # application-server keys accepted and ignored
    warnings: tuple[str, ...] = ()

    def daemon(self, name: str) -> DaemonPlan:
        for d in self.daemons:
            if d.name == name:
                return d
        raise KeyError(name)
