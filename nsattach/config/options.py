"""The one option table: every key nsattach understands, with its converter, default,
whether it repeats, and its help text.

The same table drives ``nsattach --help-options``, ``check`` and the plan builder. Keys keep
uWSGI's spelling. Three more lists sit beside it: the configuration-language keys the ini
loader executes itself (``CONFIG_KEYS``), uWSGI application-server keys that are accepted and
ignored with one warning (``APP_SERVER_KEYS``), and uWSGI keys refused with a reason
(``REFUSED_KEYS``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from nsattach.config import convert as c

GROUPS = {
    "daemon": "Daemons",
    "master": "Master",
    "namespace": "Namespace jail",
    "hook": "Hooks",
    "legion": "Legion",
    "config": "Configuration language",
}


@dataclass(frozen=True)
class Option:
    name: str
    group: str
    help: str
    convert: Callable[[str], Any] = c.as_str
    default: Any = None
    repeat: bool = False
    aliases: tuple[str, ...] = ()
    metavar: str = "VALUE"
    immediate: bool = False      # executed by the ini loader while reading (logic, includes)
    flag: bool = False           # a boolean: `--key` alone on the command line means true

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _daemon(name: str, metavar: str, help: str, **kw) -> Option:
    return Option(name, "daemon", help, c.as_nonempty, repeat=True, metavar=metavar, **kw)


_OPTIONS: list[Option] = [
    # --- daemons ---------------------------------------------------------------------
    _daemon("attach-daemon", "COMMAND",
            "Run COMMAND (via /bin/sh -c) as a foreground child; respawned when it dies, "
            "stopped when the master stops or reloads."),
    _daemon("attach-control-daemon", "COMMAND",
            "Like attach-daemon, but its death stops the whole instance."),
    _daemon("smart-attach-daemon", "PIDFILE[,FREQ] COMMAND",
            "COMMAND daemonizes itself and writes PIDFILE; tracked through it, survives "
            "master stop and reload and is re-adopted. FREQ: seconds to wait for the pidfile "
            "after a spawn (default 10)."),
    _daemon("smart-attach-daemon2", "PIDFILE[,FREQ] COMMAND",
            "COMMAND stays in the foreground; the master daemonizes it and writes PIDFILE."),
    _daemon("attach-daemon2", "KEY=VALUE[,KEY=VALUE...]",
            "Daemon in key=value form. Keys: command/cmd/exec, name, freq, pidfile, control, "
            "daemonize/daemon, touch, stopsignal/stop_signal, reloadsignal/reload_signal, stdin, "
            "uid, gid, chdir, max_throttle, notifypid, output (inherit, tag or a file), ns_pid, legion."),
    _daemon("legion-attach-daemon", "LEGION COMMAND",
            "attach-daemon that runs only while this node is the lord of LEGION."),
    _daemon("legion-smart-attach-daemon", "LEGION PIDFILE[,FREQ] COMMAND",
            "smart-attach-daemon that runs only while this node is the lord of LEGION."),
    _daemon("legion-smart-attach-daemon2", "LEGION PIDFILE[,FREQ] COMMAND",
            "smart-attach-daemon2 that runs only while this node is the lord of LEGION."),
    Option("daemon-output", "daemon",
           "Where daemons' stdout/stderr go: inherit (the master's, as uWSGI) or tag (captured line by "
           "line into the master's log with the daemon's name; daemons without a pidfile only).",
           c.as_nonempty, "inherit", metavar="inherit|tag"),
    Option("daemon-logdir", "daemon",
           "Write each daemon's output to DIR/NAME.log (reopened on SIGUSR2 or nsattach reopen-logs).",
           c.as_nonempty, metavar="DIR"),
    Option("daemons-honour-stdin", "daemon", "Do not connect the daemons' stdin to /dev/null.",
           c.as_bool, False, flag=True, metavar="BOOL"),
    # --- master ----------------------------------------------------------------------
    Option("master", "master", "Accepted for compatibility: nsattach always runs a master.",
           c.as_bool, True, flag=True, metavar="BOOL"),
    Option("uid", "master", "Drop the master's privileges to this user (name or number) after the as-root hooks.",
           c.as_nonempty, metavar="USER"),
    Option("gid", "master", "Drop the master's group to this group (name or number).",
           c.as_nonempty, metavar="GROUP"),
    Option("pidfile", "master", "Write the master's pid to this file.", c.as_nonempty, metavar="PATH"),
    Option("reload-mercy", "master",
           "Seconds dumb and legion daemons get to exit on stop or reload before SIGKILL (0 = default 3).",
           c.int_range(0), 3, metavar="SECONDS"),
    Option("touch-reload", "master", "Reload the master when this file is touched.", c.as_nonempty,
           repeat=True, metavar="PATH"),
    Option("master-fifo", "master", "uWSGI-compatible master FIFO (commands r R q Q s P 0-9).",
           c.as_nonempty, repeat=True, metavar="PATH"),
    Option("logto", "master", "Append the master's log (and the daemons' output) to this file.",
           c.as_nonempty, metavar="PATH"),
    Option("env", "master", "Set an environment variable for the master, hooks and daemons.",
           c.as_nonempty, repeat=True, metavar="NAME=VALUE"),
    Option("unenv", "master", "Remove an environment variable.", c.as_nonempty, repeat=True, metavar="NAME"),
    Option("chdir", "master", "Change the master's working directory (daemons inherit it).",
           c.as_nonempty, metavar="DIR"),
    Option("vacuum", "master", "Remove the pidfile at exit.", c.as_bool, False, flag=True, metavar="BOOL"),
    Option("control-socket", "master",
           "Path of the control socket for nsattach status/stop/start/... (default "
           "/run/nsattach/<config name>.sock; off disables it).", c.as_nonempty, metavar="PATH|off"),
    Option("control-group", "master", "Also let members of this group use the control socket.",
           c.as_nonempty, metavar="GROUP"),
    Option("binsh", "master", "Shell used for daemons and exec hooks; the first executable one wins (default /bin/sh).",
           c.as_nonempty, repeat=True, metavar="PATH"),
    Option("die-on-term", "master", "Accepted for compatibility: SIGTERM always stops nsattach (uWSGI 2.1 meaning).",
           c.as_bool, True, flag=True, metavar="BOOL"),
    Option("strict", "master", "Accepted for compatibility: unknown keys are always errors in nsattach.",
           c.as_bool, True, flag=True, metavar="BOOL"),
    # --- namespace -------------------------------------------------------------------
    Option("namespace", "namespace",
           "Run the master as PID 1 of new mount/PID/UTS/IPC namespaces, pivoted into DIR, with hostname HOSTNAME.",
           c.as_nonempty, aliases=("ns",), metavar="DIR[:HOSTNAME]"),
    Option("namespace-keep-mount", "namespace",
           "Bind a host path into the jail: PATH (same place, or PATH minus the jail root) or SRC:DST.",
           c.as_nonempty, repeat=True, metavar="PATH|SRC:DST"),
    Option("namespace-keep-mount-ro", "namespace",
           "Like namespace-keep-mount, but the bind (and everything mounted below it) is read-only.",
           c.as_nonempty, repeat=True, metavar="PATH|SRC:DST"),
    Option("namespace-net", "namespace", "Also give the jail a new network namespace (loopback up).",
           c.as_bool, False, aliases=("ns-net",), flag=True, metavar="BOOL"),
    Option("namespace-private-dev", "namespace",
           "Give the jail its own minimal /dev: a tmpfs with null, zero, full, random, urandom and tty "
           "bound from the host, a new devpts instance on /dev/pts with /dev/ptmx, and /dev/shm. "
           "Off by default (uWSGI adds nothing to the jail's /dev).",
           c.as_bool, False, flag=True, metavar="BOOL"),
    Option("namespace-netns", "namespace",
           "Put the jail into this existing named network namespace (/run/netns/NAME, e.g. from ip netns add) "
           "instead of a new one.", c.as_nonempty, metavar="NAME"),
    Option("namespace-veth", "namespace",
           "With namespace-net: a veth pair, HOST_IF stays in nsattach's network namespace, JAIL_IF goes into the jail.",
           c.as_nonempty, metavar="HOST_IF:JAIL_IF"),
    Option("namespace-veth-address", "namespace", "Address of the jail end of namespace-veth.",
           c.as_nonempty, metavar="ADDR/PREFIX"),
    Option("namespace-veth-host-address", "namespace", "Address of the host end of namespace-veth.",
           c.as_nonempty, metavar="ADDR/PREFIX"),
    Option("namespace-veth-gateway", "namespace", "Default route inside the jail, through the veth.",
           c.as_nonempty, metavar="ADDR"),
    Option("unshare", "namespace",
           "unshare() these namespaces for the master without a jail: comma list of "
           "files, ipc, net, pid, ns/fs/mount/mnt, sysvsem, uts (pid: the master forks once and "
           "runs as PID 1 of the new namespace; mount: / is made private in it).",
           c.as_nonempty, repeat=True, metavar="LIST"),
    # --- legion ----------------------------------------------------------------------
    Option("legion", "legion", "Join a legion: NAME ADDR VALOR CIPHER:SECRET [IV].",
           c.as_nonempty, repeat=True, metavar="NAME IP:PORT VALOR CIPHER:SECRET [IV]"),
    Option("legion-mcast", "legion", "Like legion, and ADDR (a multicast group) is also where announcements go.",
           c.as_nonempty, repeat=True, metavar="NAME IP:PORT VALOR CIPHER:SECRET [IV]"),
    Option("legion-node", "legion", "Send the legion's announcements to this node too.",
           c.as_nonempty, repeat=True, metavar="NAME IP:PORT"),
    Option("legion-quorum", "legion", "Votes needed to elect a lord.", c.as_nonempty, repeat=True, metavar="NAME N"),
    Option("legion-scroll", "legion", "Text announced with this node.", c.as_nonempty, repeat=True, metavar="NAME TEXT"),
    *[
        Option(f"legion-{event}", "legion", f"Action on the legion's {event} event: cmd:, exec: or log:.",
               c.as_nonempty, repeat=True, metavar="NAME ACTION:ARG")
        for event in ("setup", "join", "lord", "unlord", "death", "node-joined", "node-left")
    ],
    Option("legion-etcd", "legion",
           "Join a legion whose membership and lordship live in etcd (leases, fencing term): NAME, "
           "comma-separated http(s)://HOST:PORT client URLs of the etcd members, VALOR.",
           c.as_nonempty, repeat=True, metavar="NAME URL[,URL...] VALOR"),
    Option("legion-etcd-prefix", "legion", "Key prefix of an etcd legion (default /nsattach/legion/).",
           c.as_nonempty, repeat=True, metavar="NAME PREFIX"),
    Option("legion-etcd-ttl", "legion",
           "Lease TTL of an etcd legion, in seconds: how long a dead or cut-off lord keeps the legion "
           "(default 15, or 2 x reload-mercy + 5 if larger; at least that).",
           c.as_nonempty, repeat=True, metavar="NAME SECONDS"),
    Option("legion-etcd-cacert", "legion", "CA bundle to verify the etcd members' TLS certificates with.",
           c.as_nonempty, repeat=True, metavar="NAME PATH"),
    Option("legion-etcd-cert", "legion", "TLS client certificate for etcd (PEM; may hold the key too).",
           c.as_nonempty, repeat=True, metavar="NAME PATH"),
    Option("legion-etcd-key", "legion", "Private key of the TLS client certificate.",
           c.as_nonempty, repeat=True, metavar="NAME PATH"),
    Option("legion-etcd-user", "legion", "etcd user and password (etcd authentication).",
           c.as_nonempty, repeat=True, metavar="NAME USER:PASSWORD"),
    Option("legion-lord-delay", "legion",
           "Seconds a node that became lord waits before starting its legion daemons, so the previous "
           "lord's are surely gone (like consul's lock-delay; 0 = start at once, as uWSGI).",
           c.int_range(0), 0, metavar="SECONDS"),
    Option("legion-freq", "legion", "Seconds between announcements (0 = default 3).", c.int_range(0), 3, metavar="SECONDS"),
    Option("legion-tolerance", "legion", "Seconds without news before a node is dropped (0 = default 15).",
           c.int_range(0), 15, metavar="SECONDS"),
    Option("legion-skew-tolerance", "legion", "Oldest packet timestamp accepted, in seconds (0 = default 60).",
           c.int_range(0), 60, metavar="SECONDS"),
    Option("legion-death-on-lord-error", "legion",
           "Seconds to step out of the legion when a lord action fails (0 = off).", c.int_range(0), 0, metavar="SECONDS"),
    Option("legion-scroll-max-size", "legion", "Largest scroll accepted.", c.int_range(0, 65535), 4096, metavar="BYTES"),
    Option("legion-scroll-list-max-size", "legion", "Largest scroll list.", c.int_range(0), 32768, metavar="BYTES"),
    Option("multicast-ttl", "legion", "TTL of multicast announcements.", c.int_range(0, 255), 1, metavar="N"),
    Option("multicast-loop", "legion", "Loop multicast announcements back to this host.",
           c.as_bool, True, flag=True, metavar="BOOL"),
]

# --- hooks: one option per (family, phase), as uWSGI names them ------------------------------

HOOK_PHASES: dict[str, tuple[str, ...]] = {
    # phase -> families that exist for it
    "asap": ("hook", "mount", "umount", "exec", "call"),
    "pre-jail": ("hook", "mount", "umount", "exec", "call"),
    "post-jail": ("hook", "mount", "umount", "exec", "call"),
    "in-jail": ("hook", "mount", "umount", "exec", "call"),
    "as-root": ("hook", "mount", "umount", "exec", "call"),
    "as-user": ("hook", "exec", "call"),
    "master-start": ("hook",),
    "as-user-atexit": ("hook", "exec", "call"),
}

_HOOK_HELP = {
    "hook": "Advanced hook ACTION:ARG",
    "mount": "Mount: FSTYPE SOURCE TARGET [FLAGS [DATA]]",
    "umount": "Unmount: TARGET [FLAGS]",
    "exec": "Run a shell command; a non-zero exit or a death by signal is fatal",
    "call": "Call a C function (not supported by nsattach: rejected)",
}

for _phase, _families in HOOK_PHASES.items():
    for _family in _families:
        _aliases: tuple[str, ...] = ()
        if _phase == "as-user-atexit" and _family == "exec":
            _aliases = ("exec-as-user-at-exit",)   # the name uWSGI's docs use (Q-H7)
        _OPTIONS.append(Option(
            f"{_family}-{_phase}", "hook", f"{_HOOK_HELP[_family]} in the {_phase} phase.",
            c.as_nonempty, repeat=True, aliases=_aliases, metavar="ARG"))
_OPTIONS.append(Option("hook-touch", "hook", "Run ACTION when FILE is touched.", c.as_nonempty,
                       repeat=True, metavar="FILE ACTION:ARG"))

# --- keys of the configuration language, executed by the ini loader ------------------------

CONFIG_KEYS: dict[str, str] = {
    "ini": "Load another ini file here (relative to the including file); FILE[:SECTION].",
    "include": "Same as ini.",
    "inherit": "Same as ini (uWSGI loads it later; nsattach loads it in place).",
    "set": "Add NAME=VALUE as if it were a line of its own.",
    "set-placeholder": "Define a placeholder NAME=VALUE for %(NAME) (value used raw).",
    "set-ph": "Same as set-placeholder.",
    "for": "Repeat the following lines for each space-separated item, as %(_), until endfor.",
    "for-times": "Repeat the following lines N times (%(_) = 1..N).",
    "for-glob": "Repeat the following lines for each file matching the pattern.",
    "for-readline": "Repeat the following lines for each line of the file.",
    "endfor": "Close a for block.",
    "end-for": "Close a for block.",
    "if-env": "Lines until endif only if the variable is set (NAME) or equal (NAME=VALUE); %(_) = its value.",
    "ifenv": "Same as if-env.",
    "if-not-env": "Lines until endif only if the variable is not set.",
    "if-exists": "Lines until endif only if the path exists.",
    "ifexists": "Same as if-exists.",
    "if-not-exists": "Lines until endif only if the path does not exist.",
    "if-file": "Lines until endif only if the path is a file.",
    "if-not-file": "Lines until endif only if the path is not a file.",
    "if-dir": "Lines until endif only if the path is a directory.",
    "ifdir": "Same as if-dir.",
    "if-directory": "Same as if-dir.",
    "if-not-dir": "Lines until endif only if the path is not a directory.",
    "if-opt": "Lines until endif only if the option was given (NAME or NAME=VALUE).",
    "if-not-opt": "Lines until endif only if the option was not given.",
    "if-hostname": "Lines until endif only on this host name.",
    "if-not-hostname": "Lines until endif only on other host names.",
    "if-reload": "Lines until endif only when reloading (never true while reading a file).",
    "if-not-reload": "Lines until endif only when not reloading.",
    "else": "Close the current block and take the following lines if its condition was false.",
    "endif": "Close an if block.",
    "end-if": "Close an if block.",
    "end": "Close any block.",
}
for _key, _help in CONFIG_KEYS.items():
    _OPTIONS.append(Option(_key, "config", _help, c.as_str, repeat=True, immediate=True))

# --- uWSGI application-server keys: accepted and ignored, with one warning ---------------------

APP_SERVER_KEYS = frozenset("""
socket uwsgi-socket http http-socket https https-socket http2 fastcgi-socket scgi-socket
shared-socket protocol chmod-socket chown-socket umask-socket socket-timeout listen
processes workers threads enable-threads single-interpreter thunder-lock lazy lazy-apps cheaper
cheaper-initial cheaper-step cheaper-algo module wsgi wsgi-file file callable mount
manage-script-name mountpoint pythonpath python-path pp home virtualenv venv pyhome pyargv
py-autoreload rack rbrequire rails rbshell psgi plugin plugins plugin-dir need-app harakiri
harakiri-verbose buffer-size post-buffering max-requests max-worker-lifetime reload-on-rss
reload-on-as evil-reload-on-rss offload-threads static-map static-map2 check-static
static-index route route-run response-route stats stats-http memory-report vhost
no-default-app disable-logging log-4xx log-5xx req-logger logger log-format log-date
log-x-forwarded-for spooler spooler-processes mule mules gevent async ugreen touch-workers-reload
touch-chain-reload touch-mules-reload lazy-apps worker-reload-mercy auto-procname procname-prefix
procname-prefix-spaced procname memory-report cpu-affinity limit-as limit-post add-header
""".split())

REFUSED_KEYS: dict[str, str] = {
    "daemonize": "nsattach runs in the foreground; run it under systemd (see README) and use logto for a log file",
    "daemonize2": "nsattach runs in the foreground; run it under systemd (see README)",
    "emperor": "the Emperor is not part of nsattach",
    "xml": "only the ini dialect is supported",
    "yaml": "only the ini dialect is supported",
    "yml": "only the ini dialect is supported",
    "json": "only the ini dialect is supported",
}

OPTIONS: dict[str, Option] = {}
for _opt in _OPTIONS:
    for _n in _opt.names:
        if _n in OPTIONS:
            raise AssertionError(f"option table: duplicate name {_n}")
        OPTIONS[_n] = _opt
del _opt, _n


def lookup(name: str) -> Option | None:
    return OPTIONS.get(name)


def is_option(name: str) -> bool:
    return name in OPTIONS


def suggest(name: str) -> str | None:
    """The closest known key, for "did you mean" (only keys users can write in a file)."""
    candidates = [n for n in OPTIONS]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return match[0] if match else None


def canonical_options() -> list[Option]:
    """Every option once, in table order."""
    seen: list[Option] = []
    ids = set()
    for opt in OPTIONS.values():
        if id(opt) not in ids:
            ids.add(id(opt))
            seen.append(opt)
    return seen


def format_help_options(width: int = 100) -> str:
    """The text of ``nsattach --help-options``, made from the table."""
    import textwrap

    lines = ["nsattach options (each can be an ini key or a --key VALUE on the command line)", ""]
    for group, title in GROUPS.items():
        lines.append(f"{title}:")
        for opt in canonical_options():
            if opt.group != group:
                continue
            head = "  " + " | ".join(opt.names) + ("" if opt.group == "config" else f" = {opt.metavar}")
            notes = []
            if opt.repeat and opt.group != "config":
                notes.append("repeatable")
            if opt.default not in (None, False, ()) and not opt.repeat:
                notes.append(f"default {opt.default}")
            text = opt.help + (f" [{', '.join(notes)}]" if notes else "")
            lines.append(head)
            lines.extend(textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      "))
        lines.append("")
    lines.append("uWSGI application-server keys accepted and ignored (with a warning):")
    lines.extend(textwrap.wrap(" ".join(sorted(APP_SERVER_KEYS)), width, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(lines) + "\n"
