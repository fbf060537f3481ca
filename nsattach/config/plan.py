"""RawConfig -> Plan: every option converted, every cross-reference checked, every problem
collected, before anything runs.

``build_plan`` either returns a frozen Plan or raises one ConfigError carrying every problem
it found, each naming file, line and key. It reads the account databases (user and group
names) and looks at the filesystem only to warn (a jail root that does not exist yet is a
warning here, a precise error when the jail is built).
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import signal
from dataclasses import dataclass, field, replace
from typing import Any

from nsattach.config import convert as c
from nsattach.config.model import (
    DEFAULT_MAX_THROTTLE_S, DEFAULT_PIDFILE_FREQ, DEFAULT_RELOAD_MERCY_S, DaemonKind, DaemonPlan,
    EtcdLegionPlan, HookPlan, Identity, KeepMount, LegionActionPlan, LegionNodePlan, LegionPlan, LegionSettings,
    MasterPlan, NamespacePlan, Plan, VethPlan,
)
from nsattach.config.options import APP_SERVER_KEYS, HOOK_PHASES, REFUSED_KEYS, lookup, suggest
from nsattach.config.raw import Entry, RawConfig
from nsattach.errors import ConfigError, ConfigProblem
from nsattach.legion.ciphers import lookup_cipher
from nsattach.legion.etcd_client import parse_endpoint

DAEMON2_KEYS = (
    "command", "cmd", "exec", "name", "freq", "pidfile", "control", "daemonize", "daemon", "touch",
    "stopsignal", "stop_signal", "reloadsignal", "reload_signal", "stdin", "uid", "gid", "ns_pid",
    "chdir", "max_throttle", "notifypid", "legion", "output",
)
DAEMON2_FLAGS = ("control", "daemonize", "daemon", "stdin", "ns_pid", "notifypid")

UNSHARE_NAMES = ("files", "ipc", "net", "io", "parent", "pid", "ns", "fs", "mount", "mnt", "sysvsem", "uts", "user")
UNSHARE_INVALID = {   # uWSGI accepts them, the kernel refuses them
    "io": "CLONE_IO is not a flag unshare(2) accepts (EINVAL)",
    "parent": "CLONE_PARENT is not a flag unshare(2) accepts (EINVAL)",
    "user": "a user namespace would leave the master without root before its uid/gid mappings exist; "
            "nsattach does not support unshare = user",
}
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")

HOOK_ACTIONS = (
    "exec", "safeexec", "mount", "umount", "cd", "chdir", "mkdir", "putenv", "create", "creat",
    "write", "writen", "append", "appendn", "writefifo", "spinningfifo", "unlink", "chmod",
    "sticky", "chown", "chown2", "hostname", "print", "log", "exit", "wait_for_fs",
    "wait_for_file", "wait_for_dir", "wait_for_socket",
)
HOOK_ACTIONS_REFUSED = ("call", "callret", "callint", "callintret", "unix_signal", "rpc", "retryrpc", "alarm")
MOUNT_FLAGS = ("bind", "dirsync", "mandlock", "move", "noatime", "nodev", "noexec", "rdonly",
               "readonly", "ro", "remount", "nosuid", "sync", "rec", "recursive", "private",
               "shared", "slave", "unbindable", "defaults")
UMOUNT_FLAGS = ("rec", "recursive", "detach", "force", "expire", "nofollow")

LEGION_EVENTS = ("setup", "join", "lord", "unlord", "death", "node-joined", "node-left")
LEGION_ACTIONS = ("cmd", "exec", "log")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[^=\0]+$")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")


class _Problems:
    def __init__(self) -> None:
        self.errors: list[ConfigProblem] = []

    def add(self, entry: Entry | None, message: str, key: str | None = None) -> None:
        origin = entry.origin if entry is not None else None
        self.errors.append(ConfigProblem(origin, key or (entry.key if entry else None), message))


@dataclass
class _Draft:
    """A daemon while it is being built: plain fields, checked and frozen at the end."""

    option: str
    entry: Entry
    command: str = ""
    name: str | None = None
    pidfile: str | None = None
    daemonize: bool = False
    freq: int = DEFAULT_PIDFILE_FREQ
    control: bool = False
    stop_signal: int = int(signal.SIGTERM)
    reload_signal: int | None = None
    uid: str | None = None
    gid: str | None = None
    honour_stdin: bool = False
    touch: list[str] = field(default_factory=list)
    legion: str | None = None
    ns_pid: bool = False
    chdir: str | None = None
    max_throttle: int = 0
    notifypid: bool = False
    output: str | None = None


def build_plan(raw: RawConfig, *, cwd: str | None = None, accounts: c.Accounts = c.SYSTEM_ACCOUNTS) -> Plan:
    return _Builder(raw, cwd or os.getcwd(), accounts).build()


class _Builder:
    def __init__(self, raw: RawConfig, cwd: str, accounts: c.Accounts):
        self.raw = raw
        self.cwd = cwd
        self.accounts = accounts
        self.problems = _Problems()
        self.warnings: list[str] = [str(w) for w in raw.warnings]
        self.values: dict[str, list[tuple[Any, Entry]]] = {}
        self.ignored: list[str] = []
        self._position_of: dict[int, int] | None = None
        # With a jail (root other than /) the master and the daemons live inside it: relative
        # paths that they use are resolved against the jail's / (where the master's cwd is after
        # the pivot), and uid/gid names against the jail's /etc/passwd and /etc/group.
        self.jail_root: str | None = None
        self.id_accounts = accounts

    # -- generic option handling ------------------------------------------------------

    def build(self) -> Plan:
        self._convert_entries()
        self._find_jail_root()
        master = self._master()
        legions, legion_settings, etcd_legions = self._legions(master)
        daemons = self._daemons(master, {lg.name for lg in legions} | {lg.name for lg in etcd_legions})
        namespace = self._namespace()
        hooks = self._hooks()
        if any(h.phase == "post-jail" for h in hooks) and namespace is None and not master.unshare:
            self.warnings.append("post-jail hooks run only with namespace (in the outer process) or unshare "
                                 "(after it): as configured they never run")
        if self.problems.errors:
            raise ConfigError(sorted(self.problems.errors, key=self._position))
        if self.ignored:
            names = ", ".join(dict.fromkeys(self.ignored))
            self.warnings.append(f"ignored uWSGI application-server options (nsattach runs no application server): {names}")
        return Plan(
            config_files=tuple(self.raw.files), master=master, daemons=tuple(daemons),
            namespace=namespace, hooks=tuple(hooks), legions=tuple(legions),
            legion_settings=legion_settings, etcd_legions=tuple(etcd_legions),
            ignored_options=tuple(dict.fromkeys(self.ignored)),
            warnings=tuple(self.warnings),
        )

    def _position(self, problem: ConfigProblem) -> tuple[int, int]:
        """Sort key: problems in the order of the files and lines they point at."""
        if problem.origin is None:
            return (-1, 0)
        files = self.raw.files
        rank = files.index(problem.origin.file) if problem.origin.file in files else len(files)
        return (rank, problem.origin.line)

    def _convert_entries(self) -> None:
        for entry in self.raw.entries:
            opt = lookup(entry.key)
            if opt is None:
                if entry.key in APP_SERVER_KEYS:
                    self.ignored.append(entry.key)
                elif entry.key in REFUSED_KEYS:
                    self.problems.add(entry, f"not supported: {REFUSED_KEYS[entry.key]}")
                elif entry.key in self.raw.placeholders:
                    pass   # a placeholder, used as %(name) somewhere
                else:
                    hint = suggest(entry.key)
                    did_you_mean = f"did you mean {hint!r}? " if hint else ""
                    self.problems.add(entry, f"unknown option ({did_you_mean}see nsattach --help-options; "
                                             f"a placeholder must be used as %({entry.key}) or set with set-placeholder)")
                continue
            if opt.immediate:
                continue
            try:
                value = opt.convert(entry.value)
            except ValueError as exc:
                self.problems.add(entry, str(exc))
                continue
            self.values.setdefault(opt.name, []).append((value, entry))

    def _all(self, name: str) -> list[tuple[Any, Entry]]:
        return self.values.get(name, [])

    def _in_order(self, *names: str) -> list[tuple[Any, Entry, str]]:
        """(value, entry, option) of several options, in the order they appear in the config."""
        items = [(value, entry, name) for name in names for value, entry in self._all(name)]
        position = self._positions()
        return sorted(items, key=lambda item: position[id(item[1])])

    def _positions(self) -> dict[int, int]:
        if self._position_of is None:
            self._position_of = {id(e): i for i, e in enumerate(self.raw.entries)}
        return self._position_of

    def _last(self, name: str, default: Any = None) -> tuple[Any, Entry | None]:
        items = self.values.get(name)
        if not items:
            opt = lookup(name)
            return (opt.default if default is None and opt is not None else default), None
        return items[-1]

    def _abspath(self, path: str, base: str | None = None) -> str:
        return posixpath.normpath(posixpath.join(base or self.cwd, path))

    def _inner_path(self, path: str, base: str | None = None) -> str:
        """A path the master or a daemon uses after the jail is built (see __init__)."""
        return posixpath.normpath(posixpath.join(base or ("/" if self.jail_root else self.cwd), path))

    def _find_jail_root(self) -> None:
        value, _ = self._last("namespace")
        if value is None:
            return
        root = value.strip().partition(":")[0]
        if root.startswith("/") and posixpath.normpath(root) != "/":
            self.jail_root = posixpath.normpath(root)
            self.id_accounts = jail_accounts(self.jail_root)

    def _resolve_identity(self, user: str | None, group: str | None) -> Identity:
        """uid/gid texts -> Identity; in a jail from the jail's own account files, with the
        supplementary groups resolved here too (nothing asks the host's NSS for a jail user)."""
        try:
            identity = c.resolve_identity(user, group, self.id_accounts)
        except ValueError as exc:
            if self.jail_root:
                raise ValueError(f"{exc} [looked up in the jail's {self.jail_root}/etc/passwd and "
                                 f"{self.jail_root}/etc/group]") from None
            raise
        if self.jail_root and identity.gid is not None:
            groups = [identity.gid]
            if identity.user is not None:
                for gid in jail_group_ids(self.jail_root, identity.user):
                    if gid not in groups:
                        groups.append(gid)
            identity = replace(identity, groups=tuple(groups))
        return identity

    # -- master ---------------------------------------------------------------------------

    def _master(self) -> MasterPlan:
        identity = Identity()
        uid, uid_entry = self._last("uid")
        gid, gid_entry = self._last("gid")
        if uid is not None or gid is not None:
            try:
                identity = self._resolve_identity(uid, gid)
            except ValueError as exc:
                self.problems.add(uid_entry or gid_entry, str(exc))
        pidfile, _ = self._last("pidfile")
        mercy, _ = self._last("reload-mercy")
        chdir, chdir_entry = self._last("chdir")
        if chdir is not None:
            chdir = self._inner_path(chdir)
            seen_from_here = (self.jail_root + chdir) if self.jail_root else chdir
            if not os.path.isdir(seen_from_here):
                self.warnings.append(f"{chdir_entry.origin}: chdir: {seen_from_here} is not a directory (yet)")
        env: list[tuple[str, str]] = []
        for value, entry in self._all("env"):
            key, sep, val = value.partition("=")
            if not sep or not key or not ENV_NAME_RE.match(key):
                self.problems.add(entry, f"{value!r} is not NAME=VALUE")
            else:
                env.append((key, val))
        binsh = "/bin/sh"
        shells = [v for v, _ in self._all("binsh")]
        for shell in shells:
            if os.access(shell, os.X_OK):
                binsh = shell
                break
        else:
            if shells:
                self.warnings.append(f"binsh: none of {', '.join(shells)} is executable; using /bin/sh")
        unshare: list[str] = []
        for value, entry in self._all("unshare"):
            for name in (n.strip() for n in value.split(",")):
                if name not in UNSHARE_NAMES:
                    self.problems.add(entry, f"unknown namespace {name!r} (valid: {', '.join(UNSHARE_NAMES)})")
                elif name in UNSHARE_INVALID:
                    self.problems.add(entry, f"{name}: {UNSHARE_INVALID[name]}")
                else:
                    unshare.append(name)
        logto, _ = self._last("logto")
        control, _ = self._last("control-socket")
        if control is None:
            from nsattach.control.protocol import default_socket_path

            control = default_socket_path(self.raw.files)
        elif control.strip().lower() in ("off", "none", "false", "no", "0"):
            control = None
        else:
            control = self._abspath(control)
        control_group = None
        group, group_entry = self._last("control-group")
        if group is not None:
            try:
                control_group = c.resolve_identity(None, group, self.accounts).gid
            except ValueError as exc:
                self.problems.add(group_entry, str(exc))
        return MasterPlan(
            identity=identity,
            pidfile=self._abspath(pidfile) if pidfile else None,
            reload_mercy=mercy or DEFAULT_RELOAD_MERCY_S,
            touch_reload=tuple(self._inner_path(v) for v, _ in self._all("touch-reload")),
            master_fifo=tuple(self._inner_path(v) for v, _ in self._all("master-fifo")),
            logto=self._abspath(logto) if logto else None,
            chdir=chdir,
            vacuum=self._last("vacuum")[0],
            daemons_honour_stdin=self._last("daemons-honour-stdin")[0],
            binsh=binsh,
            env=tuple(env),
            unenv=tuple(v for v, _ in self._all("unenv")),
            unshare=tuple(unshare),
            control_socket=control,
            control_group=control_group,
        )

    # -- daemons --------------------------------------------------------------------------

    def _daemons(self, master: MasterPlan, legion_names: set[str]) -> list[DaemonPlan]:
        drafts: list[_Draft] = []
        # config order across all daemon options: sort the entries by their position
        daemon_options = ("attach-daemon", "attach-control-daemon", "smart-attach-daemon",
                          "smart-attach-daemon2", "attach-daemon2", "legion-attach-daemon",
                          "legion-smart-attach-daemon", "legion-smart-attach-daemon2")
        for value, entry, opt in self._in_order(*daemon_options):
            draft = self._parse_daemon(opt, value, entry)
            if draft is not None:
                drafts.append(draft)
        self._name_daemons(drafts)
        plans = [p for p in (self._finish_daemon(d, master, legion_names) for d in drafts) if p is not None]
        seen: dict[str, DaemonPlan] = {}
        for plan in plans:
            if plan.pidfile:
                other = seen.get(plan.pidfile)
                if other is not None:
                    self.problems.errors.append(ConfigProblem(
                        plan.origin, plan.option,
                        f"pidfile {plan.pidfile} is also used by daemon {other.name!r} ({other.origin}); "
                        "each daemon needs its own pidfile"))
                else:
                    seen[plan.pidfile] = plan
        return plans

    def _parse_daemon(self, option: str, value: str, entry: Entry) -> _Draft | None:
        draft = _Draft(option=option, entry=entry)
        text = value.strip()
        if option.startswith("legion-"):
            legion, sep, text = text.partition(" ")
            text = text.strip()
            if not sep or not text:
                self.problems.add(entry, f"invalid legion daemon syntax (expected: LEGION {'COMMAND' if option == 'legion-attach-daemon' else 'PIDFILE[,FREQ] COMMAND'})")
                return None
            draft.legion = legion
            base = option[len("legion-"):]
        else:
            base = option
        if base in ("attach-daemon", "attach-control-daemon"):
            draft.command = text
            draft.control = base == "attach-control-daemon"
        elif base in ("smart-attach-daemon", "smart-attach-daemon2"):
            head, sep, command = text.partition(" ")
            if not sep or not command.strip():
                self.problems.add(entry, f"invalid {base} syntax (expected: PIDFILE[,FREQ] COMMAND)")
                return None
            pidfile, comma, freq = head.partition(",")
            if comma:
                try:
                    draft.freq = c.as_int(freq, 1)
                except ValueError as exc:
                    self.problems.add(entry, f"freq: {exc}")
                    return None
            draft.pidfile = pidfile
            draft.command = command.strip()
            draft.daemonize = base == "smart-attach-daemon2"
        else:   # attach-daemon2
            if not self._parse_daemon2(draft, text, entry):
                return None
        return draft

    def _parse_daemon2(self, draft: _Draft, text: str, entry: Entry) -> bool:
        ok = True
        command_keys = []
        for key, value in c.parse_kvlist(text):
            if key not in DAEMON2_KEYS:
                hint = suggest_from(key, DAEMON2_KEYS)
                self.problems.add(entry, f"unknown attach-daemon2 key {key!r}"
                                         f"{f' (did you mean {hint!r}?)' if hint else ''}; valid keys: {', '.join(DAEMON2_KEYS)}")
                ok = False
                continue
            try:
                if key in DAEMON2_FLAGS:
                    flag = True if value is None else c.as_bool(value)
                    setattr(draft, {"daemon": "daemonize", "stdin": "honour_stdin"}.get(key, key), flag)
                    continue
                if value is None:
                    raise ValueError("needs a value (key=value)")
                if key in ("command", "cmd", "exec"):
                    draft.command = value.strip()
                    command_keys.append(key)
                elif key == "name":
                    draft.name = value.strip()
                elif key == "freq":
                    draft.freq = c.as_int(value, 1)
                elif key == "pidfile":
                    draft.pidfile = c.as_nonempty(value).strip()
                elif key == "touch":
                    draft.touch = c.split_touch_list(value)
                elif key in ("stopsignal", "stop_signal"):
                    draft.stop_signal = c.as_signal(value)
                elif key in ("reloadsignal", "reload_signal"):
                    draft.reload_signal = None if value.strip() == "0" else c.as_signal(value)
                elif key == "uid":
                    draft.uid = value
                elif key == "gid":
                    draft.gid = value
                elif key == "chdir":
                    draft.chdir = c.as_nonempty(value).strip()
                elif key == "max_throttle":
                    draft.max_throttle = c.as_int(value, 0)
                elif key == "legion":
                    draft.legion = c.as_nonempty(value).strip()
                elif key == "output":
                    draft.output = c.as_nonempty(value).strip()
            except ValueError as exc:
                self.problems.add(entry, f"attach-daemon2 key {key}: {exc}")
                ok = False
        if not draft.command:
            self.problems.add(entry, "you need to specify a 'command' key (command=, cmd= or exec=)")
            ok = False
        return ok

    def _name_daemons(self, drafts: list[_Draft]) -> None:
        taken: dict[str, _Draft] = {}
        for d in drafts:
            if d.name is None:
                continue
            if not NAME_RE.match(d.name):
                self.problems.add(d.entry, f"attach-daemon2 key name: {d.name!r} is not a valid daemon name "
                                           "(letters, digits and . _ @ + -, at most 64 characters, starting with a letter or digit)")
            elif d.name in taken:
                self.problems.add(d.entry, f"daemon name {d.name!r} is already used at {taken[d.name].entry.origin}")
            else:
                taken[d.name] = d
        for d in drafts:
            if d.name is not None:
                continue
            base = program_name(d.command)
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            d.name = name
            taken[name] = d

    def _finish_daemon(self, d: _Draft, master: MasterPlan, legion_names: set[str]) -> DaemonPlan | None:
        entry = d.entry
        before = len(self.problems.errors)
        master_drops = master.identity.uid not in (None, 0)
        if d.ns_pid and d.daemonize:
            self.problems.add(entry, "ns_pid cannot be combined with daemonize: the pid written would be "
                                     "namespace-local (uWSGI Q-D7)")
        elif d.ns_pid and d.pidfile:
            self.problems.add(entry, "ns_pid cannot be combined with pidfile: the daemon would write a "
                                     "namespace-local pid the master cannot use (uWSGI Q-D7)")
        elif d.ns_pid and master_drops:
            self.problems.add(entry, f"ns_pid needs root to create the PID namespace, but the master drops to "
                                     f"uid {master.identity.uid} before it starts daemons: remove uid= from the "
                                     "master or ns_pid from the daemon")
        if d.daemonize and not d.pidfile:
            self.problems.add(entry, "daemonize needs a pidfile (pidfile=PATH): without one the daemon could "
                                     "never be found again (uWSGI Q-D6 respawns it forever)")
        if d.notifypid and not d.pidfile:
            self.problems.add(entry, "notifypid only applies to daemons with a pidfile")
        if d.control and d.pidfile:
            self.problems.add(entry, "control only applies to daemons without a pidfile (uWSGI ignores it there)")
        if d.legion is not None:
            if d.legion not in legion_names:
                defined = ", ".join(sorted(legion_names)) or "none defined"
                self.problems.add(entry, f"legion {d.legion!r} is not defined by any legion/legion-mcast line ({defined})")
        if d.control and d.legion:
            self.problems.add(entry, "a legion daemon cannot be a control daemon")
        identity = Identity()
        if d.uid is not None or d.gid is not None:
            try:
                identity = self._resolve_identity(d.uid, d.gid)
            except ValueError as exc:
                self.problems.add(entry, str(exc))
        if identity.changes_anything and master_drops:
            m = master.identity
            if identity.uid in (None, m.uid) and identity.gid in (None, m.gid):
                # exactly what the master already is once it dropped: nothing to change (and a
                # non-root master could not even call setgroups)
                identity = Identity()
            else:
                self.problems.add(entry, f"the master drops to {m.describe()} before it starts daemons and can then "
                                         f"no longer switch to {identity.describe()}: remove uid=/gid= from the "
                                         "daemon (it runs as the master) or from the master (it stays root)")
        output = self._daemon_output(d, entry)
        if len(self.problems.errors) != before:
            return None
        workdir = master.chdir or ("/" if self.jail_root else self.cwd)
        chdir = self._abspath(d.chdir, workdir) if d.chdir else None
        pidfile = self._abspath(d.pidfile, chdir or workdir) if d.pidfile else None
        if d.pidfile:
            kind = DaemonKind.SMART2 if d.daemonize else DaemonKind.SMART
        else:
            kind = DaemonKind.DUMB
        return DaemonPlan(
            name=d.name, command=d.command, kind=kind, option=d.option, origin=entry.origin,
            pidfile=pidfile, freq=d.freq, control=d.control, stop_signal=d.stop_signal,
            reload_signal=d.reload_signal, identity=identity,
            honour_stdin=d.honour_stdin or master.daemons_honour_stdin,
            touch=tuple(self._abspath(t, workdir) for t in d.touch), legion=d.legion,
            ns_pid=d.ns_pid, chdir=chdir, max_throttle=d.max_throttle or DEFAULT_MAX_THROTTLE_S,
            notifypid=d.notifypid, output=output,
        )

    def _daemon_output(self, d: _Draft, entry: Entry) -> str:
        """inherit, tag or an absolute file: the daemon's key, else daemon-logdir, else daemon-output."""
        output = d.output
        if output is None:
            logdir, _ = self._last("daemon-logdir")
            if logdir is not None:
                output = posixpath.join(self._inner_path(logdir), f"{d.name}.log")
            else:
                output, out_entry = self._last("daemon-output")
                if output not in ("inherit", "tag"):
                    self.problems.add(out_entry, f"{output!r} is not inherit or tag")
                    return "inherit"
                if output == "tag" and d.pidfile:
                    return "inherit"      # the global choice applies to the daemons that can take it
        elif output not in ("inherit", "tag"):
            output = self._inner_path(output)
        if output == "tag" and d.pidfile:
            self.problems.add(entry, "output=tag needs a daemon without a pidfile: a smart daemon outlives "
                                     "nsattach and would lose its output pipe (use output=FILE)")
        return output

    # -- namespace ------------------------------------------------------------------------

    def _namespace(self) -> NamespacePlan | None:
        value, entry = self._last("namespace")
        keeps = [(v, e, opt == "namespace-keep-mount-ro")
                 for v, e, opt in self._in_order("namespace-keep-mount", "namespace-keep-mount-ro")]
        net, net_entry = self._last("namespace-net")
        jail_only = ("namespace-private-dev", "namespace-netns", "namespace-veth", "namespace-veth-address",
                     "namespace-veth-host-address", "namespace-veth-gateway")
        if value is None:
            for _, e, _ in keeps:
                self.problems.add(e, f"{e.key} needs a namespace = DIR[:HOSTNAME] line")
            if net and net_entry is not None:
                self.problems.add(net_entry, "namespace-net needs a namespace = DIR[:HOSTNAME] line "
                                             "(for the master alone use unshare = net)")
            for key in jail_only:
                v, e = self._last(key)
                if e is not None and v:
                    self.problems.add(e, f"{key} needs a namespace = DIR[:HOSTNAME] line")
            return None
        root, _, hostname = value.strip().partition(":")
        if not root.startswith("/"):
            self.problems.add(entry, f"the jail directory {root!r} must be an absolute path")
            return None
        root = posixpath.normpath(root)
        if not os.path.isdir(root):
            self.warnings.append(f"{entry.origin}: namespace: {root} is not a directory (yet); the jail cannot be built without it")
        if hostname and not HOSTNAME_RE.match(hostname):
            self.problems.add(entry, f"{hostname!r} is not a valid host name (letters, digits, '.' and '-', at most 64)")
        keep_mounts = []
        for keep, e, readonly in keeps:
            src, sep, dst = keep.strip().partition(":")
            if not src.startswith("/") or (sep and not dst.startswith("/")):
                self.problems.add(e, f"{keep!r}: keep-mount paths must be absolute (PATH or SRC:DST)")
                continue
            src = posixpath.normpath(src)
            if sep:
                dst = posixpath.normpath(dst)
            else:
                dst = jail_destination(root, src)
            if dst in ("/", "/proc") or dst.startswith("/proc/"):
                self.problems.add(e, f"{keep!r}: cannot bind over the jail's {dst} (it is the jail's own)")
                continue
            keep_mounts.append(KeepMount(source=src, target=dst, readonly=readonly, origin=e.origin))
        netns, netns_entry = self._last("namespace-netns")
        if netns is not None:
            netns = netns.strip()
            if not re.match(r"^[A-Za-z0-9_.-]+$", netns) or netns in (".", ".."):
                self.problems.add(netns_entry, f"{netns!r} is not a network namespace name (as in /run/netns/NAME)")
            elif net:
                self.problems.add(netns_entry, "namespace-netns and namespace-net exclude each other "
                                               "(join an existing network namespace, or get a new one)")
        return NamespacePlan(root=root, hostname=hostname or None, keep_mounts=tuple(keep_mounts),
                             net=bool(net), origin=entry.origin, value=value.strip(),
                             private_dev=bool(self._last("namespace-private-dev")[0]),
                             veth=self._veth(bool(net)), netns=netns)

    def _veth(self, net: bool) -> VethPlan | None:
        import ipaddress

        value, entry = self._last("namespace-veth")
        extras = [(k, *self._last(k)) for k in ("namespace-veth-address", "namespace-veth-host-address",
                                                 "namespace-veth-gateway")]
        if value is None:
            for key, v, e in extras:
                if e is not None:
                    self.problems.add(e, f"{key} needs namespace-veth = HOST_IF:JAIL_IF")
            return None
        ok = True
        if not net:
            self.problems.add(entry, "namespace-veth needs namespace-net = true (the jail end goes into the "
                                     "jail's own network namespace)")
            ok = False
        host_if, sep, jail_if = value.strip().partition(":")
        for name in (host_if, jail_if):
            if not IFNAME_RE.match(name):
                self.problems.add(entry, f"{value!r}: {name!r} is not an interface name (1-15 of letters, digits, "
                                         "'_', '.', '-', '@'); expected HOST_IF:JAIL_IF")
                ok = False
                break
        addresses: dict[str, str | None] = {}
        for key, v, e in extras:
            if v is None:
                addresses[key] = None
                continue
            try:
                if key == "namespace-veth-gateway":
                    ipaddress.ip_address(v.strip())
                else:
                    if "/" not in v:
                        raise ValueError("needs a prefix length, as in 10.0.0.2/30")
                    ipaddress.ip_interface(v.strip())
            except ValueError as exc:
                self.problems.add(e, f"{v!r}: {exc}")
                ok = False
            addresses[key] = v.strip()
        if addresses["namespace-veth-gateway"] and not addresses["namespace-veth-address"]:
            v, e = self._last("namespace-veth-gateway")
            self.problems.add(e, "namespace-veth-gateway needs namespace-veth-address (the route goes out "
                                 "through the jail end)")
            ok = False
        if not ok:
            return None
        return VethPlan(host_ifname=host_if, jail_ifname=jail_if,
                        jail_address=addresses["namespace-veth-address"],
                        host_address=addresses["namespace-veth-host-address"],
                        gateway=addresses["namespace-veth-gateway"])

    # -- hooks ----------------------------------------------------------------------------

    def _hooks(self) -> list[HookPlan]:
        hooks: list[HookPlan] = []
        for phase, families in HOOK_PHASES.items():
            for family in families:
                option = f"{family}-{phase}"
                for value, entry in self._all(option):
                    if self._check_hook(family, value, entry):
                        hooks.append(HookPlan(phase, family, value, option, entry.origin))
        for value, entry in self._all("hook-touch"):
            path, sep, action = value.strip().partition(" ")
            if not sep:
                self.problems.add(entry, "invalid hook-touch syntax (expected: FILE ACTION:ARG)")
            elif self._check_hook("hook", action.strip(), entry):
                hooks.append(HookPlan("touch", "hook", f"{self._inner_path(path)} {action.strip()}", "hook-touch", entry.origin))
        return hooks

    def _check_hook(self, family: str, value: str, entry: Entry) -> bool:
        if family == "call":
            self.problems.add(entry, "calling C functions is not supported by nsattach (use exec-* instead)")
            return False
        if family == "exec":
            return True
        if family == "mount":
            return self._check_mount(value, entry)
        if family == "umount":
            return self._check_umount(value, entry)
        action, sep, arg = value.partition(":")
        action = action.lstrip("!")
        if not sep:
            self.problems.add(entry, f"invalid hook syntax {value!r}: must be ACTION:ARG (actions: {', '.join(HOOK_ACTIONS)})")
            return False
        if action in HOOK_ACTIONS_REFUSED:
            self.problems.add(entry, f"hook action {action!r} needs uWSGI internals and is not supported by nsattach")
            return False
        if action not in HOOK_ACTIONS:
            hint = suggest_from(action, HOOK_ACTIONS)
            self.problems.add(entry, f"hook action not found: {action!r}{f' (did you mean {hint!r}?)' if hint else ''}; "
                                     f"valid: {', '.join(HOOK_ACTIONS)}")
            return False
        if action == "mount":
            return self._check_mount(arg, entry)
        if action == "umount":
            return self._check_umount(arg, entry)
        if action == "exit" and arg.strip() and not arg.strip().lstrip("-").isdigit():
            self.problems.add(entry, f"exit:{arg}: the exit code must be a number")
            return False
        return True

    def _check_mount(self, value: str, entry: Entry) -> bool:
        fields = value.split()
        if len(fields) < 3:
            self.problems.add(entry, "invalid mount syntax (expected: FSTYPE SOURCE TARGET [FLAGS [DATA]])")
            return False
        if len(fields) > 3:
            bad = [f for f in fields[3].split(",") if f and f not in MOUNT_FLAGS]
            if bad:
                self.problems.add(entry, f"unknown mount flag {bad[0]!r} (valid: {', '.join(MOUNT_FLAGS)})")
                return False
        return True

    def _check_umount(self, value: str, entry: Entry) -> bool:
        fields = value.split()
        if not fields:
            self.problems.add(entry, "invalid umount syntax (expected: TARGET [FLAGS])")
            return False
        if len(fields) > 1:
            bad = [f for f in fields[1].split(",") if f and f not in UMOUNT_FLAGS]
            if bad:
                self.problems.add(entry, f"unknown umount flag {bad[0]!r} (valid: {', '.join(UMOUNT_FLAGS)})")
                return False
        return True

    # -- legion ---------------------------------------------------------------------------

    def _legions(self, master: MasterPlan) -> tuple[list[LegionPlan], LegionSettings, list[EtcdLegionPlan]]:
        """Legions are resolved after the whole file is read, so a legion-node, -quorum,
        -scroll or action line may come before its legion line (uWSGI Q-C7). UDP legions
        (legion, legion-mcast) and etcd legions (legion-etcd) share one name space, the scroll
        and the action options."""
        settings = LegionSettings(
            freq=self._last("legion-freq")[0] or 3,
            tolerance=self._last("legion-tolerance")[0] or 15,
            skew_tolerance=self._last("legion-skew-tolerance")[0] or 60,
            death_on_lord_error=self._last("legion-death-on-lord-error")[0],
            scroll_max_size=self._last("legion-scroll-max-size")[0],
            scroll_list_max_size=self._last("legion-scroll-list-max-size")[0],
            multicast_ttl=self._last("multicast-ttl")[0],
            multicast_loop=self._last("multicast-loop")[0],
            lord_delay=self._last("legion-lord-delay")[0],
        )
        legions: dict[str, LegionPlan] = {}
        for value, entry, opt in self._in_order("legion", "legion-mcast"):
            plan = self._parse_legion(value, entry, opt == "legion-mcast")
            if plan is None:
                continue
            if plan.name in legions:
                self.problems.add(entry, f"legion {plan.name!r} is already defined at {legions[plan.name].origin}")
                continue
            legions[plan.name] = plan
        etcd = self._etcd_legions(master, legions)

        def target(value: str, entry: Entry, what: str, kinds: str = "udp etcd") -> tuple[str, str] | None:
            name, sep, rest = value.strip().partition(" ")
            rest = rest.strip()
            if not sep or not rest:
                self.problems.add(entry, f"invalid {entry.key} syntax, must be LEGION {what}")
                return None
            if name in etcd and "etcd" not in kinds:
                self.problems.add(entry, f"legion {name!r} is an etcd legion: {entry.key} only applies to "
                                         "legion/legion-mcast legions")
                return None
            if name in legions and "udp" not in kinds:
                self.problems.add(entry, f"legion {name!r} is a legion/legion-mcast legion: {entry.key} only "
                                         "applies to legion-etcd legions")
                return None
            if name not in legions and name not in etcd:
                defined = ", ".join(sorted([*legions, *etcd])) or "none defined"
                self.problems.add(entry, f"unknown legion {name!r} ({defined})")
                return None
            return name, rest

        def update(name: str, **changes) -> None:
            if name in etcd:
                etcd[name] = replace(etcd[name], **changes)
            else:
                legions[name] = replace(legions[name], **changes)

        def current(name: str):
            return etcd[name] if name in etcd else legions[name]

        for value, entry in self._all("legion-node"):
            t = target(value, entry, "IP:PORT", "udp")
            if t:
                try:
                    c.as_udp_address(t[1])
                except ValueError as exc:
                    self.problems.add(entry, str(exc))
                    continue
                lg = legions[t[0]]
                legions[t[0]] = replace(lg, nodes=lg.nodes + (LegionNodePlan(t[1], entry.origin),))
        for value, entry in self._all("legion-quorum"):
            t = target(value, entry, "N", "udp")
            if t:
                try:
                    legions[t[0]] = replace(legions[t[0]], quorum=c.as_int(t[1], 0))
                except ValueError as exc:
                    self.problems.add(entry, f"quorum: {exc}")
        for value, entry in self._all("legion-scroll"):
            t = target(value, entry, "TEXT")
            if t:
                if len(t[1].encode()) > settings.scroll_max_size:
                    self.problems.add(entry, f"scroll is {len(t[1].encode())} bytes, more than legion-scroll-max-size ({settings.scroll_max_size})")
                else:
                    update(t[0], scroll=t[1])
        for event in LEGION_EVENTS:
            for value, entry in self._all(f"legion-{event}"):
                t = target(value, entry, "ACTION:ARG")
                if not t:
                    continue
                action, sep, arg = t[1].partition(":")
                if not sep:
                    self.problems.add(entry, f"invalid {event} action {t[1]!r}: must be ACTION:ARG (actions: {', '.join(LEGION_ACTIONS)})")
                elif action in ("signal", "alarm"):
                    self.problems.add(entry, f"legion action {action!r} needs uWSGI workers or alarms and is not supported (use cmd:, exec: or log:)")
                elif action not in LEGION_ACTIONS:
                    self.problems.add(entry, f"unknown legion action {action!r} (valid: {', '.join(LEGION_ACTIONS)})")
                else:
                    update(t[0], actions=current(t[0]).actions + (LegionActionPlan(event, action, arg, entry.origin),))
        for option, what, field_name in (("legion-etcd-prefix", "PREFIX", "prefix"),
                                         ("legion-etcd-cacert", "PATH", "cacert"),
                                         ("legion-etcd-cert", "PATH", "cert"),
                                         ("legion-etcd-key", "PATH", "key")):
            for value, entry in self._all(option):
                t = target(value, entry, what, "etcd")
                if not t:
                    continue
                if field_name == "prefix":
                    if not t[1].startswith("/") or " " in t[1]:
                        self.problems.add(entry, f"etcd key prefix {t[1]!r} must start with / and contain no space")
                        continue
                    update(t[0], prefix=t[1] if t[1].endswith("/") else t[1] + "/")
                else:
                    path = self._inner_path(t[1])
                    if not os.path.exists((self.jail_root or "") + path):
                        self.warnings.append(f"{entry.origin}: {option} {path} does not exist (yet)")
                    update(t[0], **{field_name: path})
        for value, entry in self._all("legion-etcd-user"):
            t = target(value, entry, "USER:PASSWORD", "etcd")
            if t:
                user, sep, password = t[1].partition(":")
                if not user or not sep:
                    self.problems.add(entry, "invalid legion-etcd-user, must be LEGION USER:PASSWORD")
                else:
                    update(t[0], user=user, password=password)
        ttl_entries: dict[str, Entry] = {}
        for value, entry in self._all("legion-etcd-ttl"):
            t = target(value, entry, "SECONDS", "etcd")
            if t:
                try:
                    update(t[0], ttl=c.as_int(t[1], 1, 9_000_000_000))
                    ttl_entries[t[0]] = entry
                except ValueError as exc:
                    self.problems.add(entry, f"legion-etcd-ttl: {exc}")
        for name, lg in etcd.items():
            self._check_etcd_legion(lg, ttl_entries.get(name))
        return list(legions.values()), settings, list(etcd.values())

    def _etcd_legions(self, master: MasterPlan, udp: dict[str, LegionPlan]) -> dict[str, EtcdLegionPlan]:
        from nsattach.legion.etcd import default_ttl

        etcd: dict[str, EtcdLegionPlan] = {}
        for value, entry in self._all("legion-etcd"):
            parts = value.split()
            if len(parts) != 3:
                self.problems.add(entry, "invalid legion-etcd syntax, must be LEGION URL[,URL...] VALOR "
                                         "(e.g. mylegion http://10.0.0.1:2379,http://10.0.0.2:2379 90)")
                continue
            name, urls, valor_text = parts
            ok = True
            if not NAME_RE.match(name):
                self.problems.add(entry, f"invalid legion name {name!r} (letters, digits, . _ @ + -)")
                ok = False
            endpoints = tuple(u for u in urls.split(",") if u)
            schemes = set()
            for url in endpoints:
                try:
                    schemes.add(parse_endpoint(url).scheme)
                except ValueError as exc:
                    self.problems.add(entry, str(exc))
                    ok = False
            if not endpoints:
                self.problems.add(entry, "legion-etcd needs at least one etcd URL")
                ok = False
            elif len(schemes) > 1:
                self.problems.add(entry, "the etcd URLs of one legion must all be http:// or all https://")
                ok = False
            try:
                valor = c.as_int(valor_text, 0)
            except ValueError as exc:
                self.problems.add(entry, f"valor: {exc} (0 = arbiter, never lord)")
                ok = False
            if name in udp or name in etcd:
                where = (udp.get(name) or etcd[name]).origin
                self.problems.add(entry, f"legion {name!r} is already defined at {where}")
                continue
            if ok:
                etcd[name] = EtcdLegionPlan(name=name, endpoints=endpoints, valor=valor, origin=entry.origin,
                                            ttl=default_ttl(master.reload_mercy), reload_mercy=master.reload_mercy)
        return etcd

    def _check_etcd_legion(self, lg: EtcdLegionPlan, ttl_entry: Entry | None) -> None:
        from nsattach.legion.etcd import REQUEST_TIMEOUT_S, min_ttl

        tls = any(e.startswith("https://") for e in lg.endpoints)
        if not tls and (lg.cacert or lg.cert or lg.key):
            self.problems.errors.append(ConfigProblem(lg.origin, "legion-etcd", (
                f"legion {lg.name!r}: legion-etcd-cacert/-cert/-key need https:// etcd URLs")))
        if lg.key and not lg.cert:
            self.problems.errors.append(ConfigProblem(lg.origin, "legion-etcd", (
                f"legion {lg.name!r}: legion-etcd-key needs legion-etcd-cert")))
        least = min_ttl(lg.reload_mercy)
        if lg.ttl < least:
            safety = 1 + REQUEST_TIMEOUT_S
            self.problems.errors.append(ConfigProblem(ttl_entry.origin if ttl_entry else lg.origin, "legion-etcd-ttl", (
                f"legion {lg.name!r}: a lease TTL of {lg.ttl} s is too short for reload-mercy {lg.reload_mercy} s: "
                f"a lord that cannot renew its lease must stop its daemons (SIGKILL after {lg.reload_mercy} s) "
                f"{safety:g} s before the lease can expire, with time left for keep-alive retries; "
                f"use legion-etcd-ttl = {lg.name} {least} or more (at least 2 x reload-mercy + 5)")))

    def _parse_legion(self, value: str, entry: Entry, mcast: bool) -> LegionPlan | None:
        parts = value.strip().split(" ", 3)
        if len(parts) < 4 or ":" not in parts[3]:
            self.problems.add(entry, "invalid legion syntax, must be LEGION IP:PORT VALOR CIPHER:SECRET [IV]")
            return None
        name, address, valor_text, rest = parts
        ok = True
        try:
            c.as_udp_address(address)
        except ValueError as exc:
            self.problems.add(entry, str(exc))
            ok = False
        try:
            valor = c.as_int(valor_text, 0)
        except ValueError as exc:
            self.problems.add(entry, f"valor: {exc} (0 = arbiter, never lord)")
            ok = False
        algo, _, secret_iv = rest.partition(":")
        secret, _, iv = secret_iv.partition(" ")
        try:
            cipher = lookup_cipher(algo).name
        except ValueError as exc:
            self.problems.add(entry, str(exc))
            ok = False
        if not secret:
            self.problems.add(entry, "the legion secret is empty (CIPHER:SECRET)")
            ok = False
        if not ok:
            return None
        return LegionPlan(name=name, address=address, valor=valor, cipher=cipher, secret=secret,
                          iv=iv or None, multicast=mcast, origin=entry.origin)


# --- helpers (pure) -------------------------------------------------------------------

def suggest_from(word: str, choices: tuple[str, ...]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return match[0] if match else None


_ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def program_name(command: str) -> str:
    """The program a command runs, for a daemon's default name: ``/usr/sbin/dropbear -j`` ->
    ``dropbear``; leading ``VAR=x``, ``exec`` and ``env`` are skipped."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for word in words:
        if _ASSIGNMENT_RE.match(word) or word in ("exec", "env", "nohup", "-"):
            continue
        base = posixpath.basename(word.rstrip("/"))
        name = re.sub(r"[^A-Za-z0-9._@+-]", "_", base).lstrip("._-+@")[:48]
        if name:
            return name
    return "daemon"


def jail_destination(root: str, path: str) -> str:
    """Where a plain keep-mount PATH appears in a jail rooted at ``root``: a path under the
    root loses the root prefix (compared by path components, unlike uWSGI's string prefix,
    Q-N5); any other path keeps its place."""
    if root == "/":
        return path
    root_parts = [p for p in root.split("/") if p]
    parts = [p for p in path.split("/") if p]
    if parts[: len(root_parts)] == root_parts:
        return "/" + "/".join(parts[len(root_parts):])
    return path


# --- a jail's own account files ---------------------------------------------------------

def _read_colon_file(path: str, fields: int) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            rows.append(parts)
    return rows


def jail_accounts(root: str) -> c.Accounts:
    """Accounts answered from ``<root>/etc/passwd`` and ``<root>/etc/group`` (parsed here: the
    host's NSS must not answer for the jail, and cannot once the master is inside it)."""
    import grp
    import pwd

    def passwd() -> list[pwd.struct_passwd]:
        out = []
        for p in _read_colon_file(posixpath.join(root, "etc/passwd"), 7):
            if p[2].isdigit() and p[3].isdigit():
                out.append(pwd.struct_passwd((p[0], p[1], int(p[2]), int(p[3]), p[4], p[5], p[6])))
        return out

    def groups() -> list[grp.struct_group]:
        out = []
        for g in _read_colon_file(posixpath.join(root, "etc/group"), 4):
            if g[2].isdigit():
                members = [m for m in g[3].split(",") if m]
                out.append(grp.struct_group((g[0], g[1], int(g[2]), members)))
        return out

    def find(rows, attr, value):
        for row in rows:
            if getattr(row, attr) == value:
                return row
        raise KeyError(value)

    return c.Accounts(
        getpwnam=lambda name: find(passwd(), "pw_name", name),
        getpwuid=lambda uid: find(passwd(), "pw_uid", uid),
        getgrnam=lambda name: find(groups(), "gr_name", name),
        getgrgid=lambda gid: find(groups(), "gr_gid", gid),
    )


def jail_group_ids(root: str, user: str) -> list[int]:
    """The groups of ``<root>/etc/group`` that list ``user`` as a member (initgroups' view)."""
    out = []
    for g in _read_colon_file(posixpath.join(root, "etc/group"), 4):
        if g[2].isdigit() and user in g[3].split(","):
            out.append(int(g[2]))
    return out
