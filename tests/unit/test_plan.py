"""RawConfig -> Plan: conversion, naming, cross-checks, and the precise error messages."""

from __future__ import annotations

import pwd
import signal

import pytest

from nsattach.config.convert import Accounts, as_bool, as_signal, parse_kvlist, resolve_identity, split_touch_list
from nsattach.config.model import DaemonKind
from nsattach.config.plan import build_plan, jail_destination, program_name
from nsattach.config.raw import Entry, RawConfig
from nsattach.errors import ConfigError, Origin


def raw(*lines: str, placeholders=()) -> RawConfig:
    entries = []
    for n, line in enumerate(lines, 1):
        key, _, value = line.partition("=")
        entries.append(Entry(key.strip(), value.strip(), Origin("ns.ini", n)))
    return RawConfig(entries=entries, files=["/etc/ns.ini"], placeholders=set(placeholders))


def plan(*lines, cwd="/srv", **kw):
    return build_plan(raw(*lines, **kw), cwd=cwd)


def errors(*lines, cwd="/srv", **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_plan(raw(*lines, **kw), cwd=cwd)
    return [str(p) for p in info.value.problems]


def one_error(*lines, **kw) -> str:
    errs = errors(*lines, **kw)
    assert len(errs) == 1, errs
    return errs[0]


# --- daemon kinds ---------------------------------------------------------------------------

def test_every_daemon_kind_in_config_order():
    p = plan("attach-daemon = memcached -p 11311",
             "smart-attach-daemon = /tmp/mc.pid memcached -d -P /tmp/mc.pid",
             "smart-attach-daemon2 = run/x.pid,5 xd --foreground",
             "attach-control-daemon = watcher",
             "attach-daemon2 = cmd=sleep 9,name=sleeper")
    kinds = [(d.name, d.kind, d.option) for d in p.daemons]
    assert kinds == [
        ("memcached", DaemonKind.DUMB, "attach-daemon"),
        ("memcached-2", DaemonKind.SMART, "smart-attach-daemon"),
        ("xd", DaemonKind.SMART2, "smart-attach-daemon2"),
        ("watcher", DaemonKind.DUMB, "attach-control-daemon"),
        ("sleeper", DaemonKind.DUMB, "attach-daemon2"),
    ]
    assert p.daemons[1].pidfile == "/tmp/mc.pid" and p.daemons[1].freq == 10
    assert p.daemons[2].pidfile == "/srv/run/x.pid" and p.daemons[2].freq == 5
    assert p.daemons[3].control is True
    assert p.daemons[0].origin == Origin("ns.ini", 1)


def test_smart_syntax_errors_name_the_line():
    assert one_error("smart-attach-daemon = /tmp/only-a-pidfile") == (
        "ns.ini:1: smart-attach-daemon: invalid smart-attach-daemon syntax (expected: PIDFILE[,FREQ] COMMAND)")
    assert "freq" in one_error("smart-attach-daemon = /tmp/p,abc cmd")


def test_attach_daemon2_every_key():
    me = pwd.getpwuid(0)
    p = plan("attach-daemon2 = cmd=my_daemon.sh,pidfile=/tmp/my.pid,uid=nobody,gid=0,stopsignal=TERM,"
             "reloadsignal=SIGUSR1,freq=3,touch=/a;'/b c';,chdir=work,max_throttle=7,notifypid=1,stdin,name=md")
    d = p.daemons[0]
    nobody = pwd.getpwnam("nobody")
    assert d.name == "md" and d.command == "my_daemon.sh" and d.kind is DaemonKind.SMART
    assert d.identity.uid == nobody.pw_uid and d.identity.gid == 0 and d.identity.user == "nobody"
    assert d.identity.home == nobody.pw_dir
    assert d.stop_signal == signal.SIGTERM and d.reload_signal == signal.SIGUSR1
    assert d.freq == 3 and d.touch == ("/a", "/b c") and d.chdir == "/srv/work"
    assert d.max_throttle == 7 and d.notifypid and d.honour_stdin
    assert me.pw_uid == 0


def test_attach_daemon2_daemonize_is_smart2_and_flags_parse_booleans():
    d = plan("attach-daemon2 = exec=x,pidfile=/p,daemonize=1").daemons[0]
    assert d.kind is DaemonKind.SMART2
    d = plan("attach-daemon2 = exec=x,pidfile=/p,daemonize=0").daemons[0]
    assert d.kind is DaemonKind.SMART          # uWSGI: daemonize=0 enables it (Q-D4)
    d = plan("attach-daemon2 = command=a\\,b").daemons[0]
    assert d.command == "a,b"


def test_attach_daemon2_keys_are_trimmed():
    d = plan("attach-daemon2 = cmd=x, pidfile=/tmp/p").daemons[0]
    assert d.pidfile == "/tmp/p"


def test_attach_daemon2_errors():
    assert one_error("attach-daemon2 = pidfile=/p") == (
        "ns.ini:1: attach-daemon2: you need to specify a 'command' key (command=, cmd= or exec=)")
    e = one_error("attach-daemon2 = cmd=x,pidfle=/p")
    assert "unknown attach-daemon2 key 'pidfle' (did you mean 'pidfile'?)" in e
    assert "daemonize needs a pidfile" in one_error("attach-daemon2 = cmd=x,daemonize=1")
    assert "ns_pid cannot be combined with daemonize" in " ".join(errors("attach-daemon2 = cmd=x,pidfile=/p,daemonize,ns_pid"))
    assert plan("attach-daemon2 = cmd=x,ns_pid=1").daemons[0].ns_pid is True
    assert "ns_pid cannot be combined with pidfile" in one_error("attach-daemon2 = cmd=x,pidfile=/p,ns_pid")
    assert "legion 'l' is not defined" in one_error("attach-daemon2 = cmd=x,legion=l")
    assert "stopsignal" in one_error("attach-daemon2 = cmd=x,stopsignal=TERMINATE")
    assert "notifypid only applies" in one_error("attach-daemon2 = cmd=x,notifypid")
    assert "control only applies" in one_error("attach-daemon2 = cmd=x,pidfile=/p,control")
    assert "'maybe' is not a boolean" in one_error("attach-daemon2 = cmd=x,stdin=maybe")


def test_user_and_group_names_must_resolve_never_fall_back_to_root():
    e = one_error("attach-daemon2 = cmd=x,uid=no-such-user-here")
    assert e == ("ns.ini:1: attach-daemon2: uid: user 'no-such-user-here' not found "
                 "(give a name from the passwd database or a numeric uid)")
    assert "group 'no-such-group' not found" in one_error("attach-daemon2 = cmd=x,uid=nobody,gid=no-such-group")
    assert "has no passwd entry" in one_error("attach-daemon2 = cmd=x,uid=54321")


def test_numeric_root_ids_are_accepted():
    d = plan("attach-daemon2 = cmd=x,uid=0,gid=0").daemons[0]
    assert d.identity.uid == 0 and d.identity.gid == 0 and d.identity.user == "root"


def test_user_without_group_gets_its_primary_group():
    nobody = pwd.getpwnam("nobody")
    d = plan("attach-daemon2 = cmd=x,uid=nobody").daemons[0]
    assert d.identity.gid == nobody.pw_gid


def test_identity_resolution_with_fake_accounts():
    class Pw:
        def __init__(self, name, uid, gid, home):
            self.pw_name, self.pw_uid, self.pw_gid, self.pw_dir = name, uid, gid, home

    class Gr:
        gr_gid = 77

    users = {"app": Pw("app", 1500, 1500, "/home/app")}
    accounts = Accounts(getpwnam=lambda n: users[n], getpwuid=lambda u: next(p for p in users.values() if p.pw_uid == u),
                        getgrnam=lambda n: Gr() if n == "web" else (_ for _ in ()).throw(KeyError(n)),
                        getgrgid=lambda g: Gr())
    ident = resolve_identity("app", "web", accounts)
    assert (ident.uid, ident.gid, ident.user, ident.home) == (1500, 77, "app", "/home/app")
    with pytest.raises(ValueError, match="group 'nope' not found"):
        resolve_identity("app", "nope", accounts)


# --- names ----------------------------------------------------------------------------------

def test_names_are_unique_and_human_friendly():
    p = plan("attach-daemon = memcached -p 1", "attach-daemon = memcached -p 2",
             "attach-daemon2 = cmd=memcached -p 3,name=memcached-2", "attach-daemon = FOO=1 exec /usr/sbin/dropbear -F")
    assert [d.name for d in p.daemons] == ["memcached", "memcached-3", "memcached-2", "dropbear"]


def test_duplicate_explicit_names_are_an_error():
    e = errors("attach-daemon2 = cmd=a,name=x", "attach-daemon2 = cmd=b,name=x")
    assert e == ["ns.ini:2: attach-daemon2: daemon name 'x' is already used at ns.ini:1"]


@pytest.mark.parametrize("command,name", [
    ("memcached -p 11311 -u roberto", "memcached"),
    ("/usr/lib/postgresql/9.1/bin/postgres -D /db/foobar1", "postgres"),
    ("%(chdir)/script/delayed_job start", "delayed_job"),
    ("'unbalanced", "unbalanced"),
    ("", "daemon"),
])
def test_program_name(command, name):
    assert program_name(command) == name


def test_two_daemons_cannot_share_a_pidfile():
    e = errors("smart-attach-daemon = /tmp/a.pid a", "smart-attach-daemon = /tmp/a.pid b")
    assert e == ["ns.ini:2: smart-attach-daemon: pidfile /tmp/a.pid is also used by daemon 'a' (ns.ini:1); "
                 "each daemon needs its own pidfile"]


def test_relative_pidfile_follows_the_daemon_working_directory():
    p = plan("chdir = /var/app", "attach-daemon2 = cmd=x,pidfile=x.pid",
             "attach-daemon2 = cmd=y,pidfile=y.pid,chdir=sub")
    assert p.daemons[0].pidfile == "/var/app/x.pid"
    assert p.daemons[1].pidfile == "/var/app/sub/y.pid" and p.daemons[1].chdir == "/var/app/sub"


# --- generic option handling --------------------------------------------------------------------

def test_unknown_key_gets_did_you_mean():
    e = one_error("attach-deamon = x")
    assert e.startswith("ns.ini:1: attach-deamon: unknown option (did you mean 'attach-daemon'?")


def test_placeholder_keys_are_not_errors():
    p = plan("base = /srv", "attach-daemon = x", placeholders={"base"})
    assert len(p.daemons) == 1


def test_app_server_keys_are_ignored_with_one_warning():
    p = plan("master = true", "socket = :3031", "rack = config.ru", "rbrequire = bundler/setup", "attach-daemon = x")
    assert p.ignored_options == ("socket", "rack", "rbrequire")
    warnings = [w for w in p.warnings if "application-server" in w]
    assert len(warnings) == 1 and "socket, rack, rbrequire" in warnings[0]


def test_refused_keys_say_why():
    assert "runs in the foreground" in one_error("daemonize = /var/log/x.log")


def test_all_errors_are_reported_together():
    e = errors("attach-deamon = x", "reload-mercy = soon", "attach-daemon2 = pidfile=/p", "smart-attach-daemon = x")
    assert [x.split(":")[1] for x in e] == ["1", "2", "3", "4"]


def test_master_options():
    p = plan("pidfile = run/master.pid", "reload-mercy = 0", "vacuum = yes", "env = A=1", "env = B=x=y",
             "chdir = /tmp", "touch-reload = /tmp/reload", "logto = /tmp/log", "daemons-honour-stdin = 1",
             "attach-daemon = x")
    m = p.master
    assert m.pidfile == "/srv/run/master.pid" and m.reload_mercy == 3 and m.vacuum
    assert m.env == (("A", "1"), ("B", "x=y")) and m.chdir == "/tmp" and m.touch_reload == ("/tmp/reload",)
    assert p.daemons[0].honour_stdin
    assert "is not NAME=VALUE" in one_error("env = JUSTNAME")


def test_flags_given_as_false_mean_off():
    assert plan("vacuum = false", "pidfile=/p").master.vacuum is False
    assert plan("vacuum = 0", "pidfile=/p").master.vacuum is False
    assert plan("vacuum", "pidfile=/p").master.vacuum is True


# --- namespace and hooks ----------------------------------------------------------------------

def test_namespace_seed_example():
    p = plan("namespace = /ns/001/:testns", "namespace-keep-mount = /dev/pts",
             "exec-as-root = chown -R www-data /etc/dropbear",
             "attach-daemon = /usr/sbin/dropbear -j -k -p 1022 -E -F -I 300")
    ns = p.namespace
    assert ns.root == "/ns/001" and ns.hostname == "testns"
    assert [(k.source, k.target) for k in ns.keep_mounts] == [("/dev/pts", "/dev/pts")]
    assert [(h.phase, h.family, h.value) for h in p.hooks] == [("as-root", "exec", "chown -R www-data /etc/dropbear")]
    assert p.daemons[0].name == "dropbear"


def test_namespace_errors():
    assert "must be an absolute path" in one_error("namespace = ns/001")
    assert "keep-mount paths must be absolute" in one_error("namespace = /ns", "namespace-keep-mount = dev")
    assert "needs a namespace" in one_error("namespace-keep-mount = /dev/pts")
    assert "not a valid host name" in one_error("namespace = /ns:bad/host")


@pytest.mark.parametrize("root,path,dst", [
    ("/apps/app1", "/apps/app1/nfs", "/nfs"),
    ("/ns/001", "/ns/0012/x", "/ns/0012/x"),      # uWSGI turns this into "2/x" (Q-N5)
    ("/ns/001", "/dev/pts", "/dev/pts"),
    ("/", "/dev/pts", "/dev/pts"),
])
def test_keep_mount_destination_by_components(root, path, dst):
    assert jail_destination(root, path) == dst


def test_hook_validation():
    assert "calling C functions is not supported" in one_error("call-asap = foo")
    assert "hook action not found: 'exce'" in one_error("hook-asap = exce:true")
    assert "must be ACTION:ARG" in one_error("hook-as-root = true")
    assert "unknown mount flag 'bogus'" in one_error("mount-as-root = tmpfs none /mnt bogus")
    assert "needs uWSGI internals" in one_error("hook-master-start = rpc:x")
    p = plan("hook-asap = !print:secret", "exec-as-user-at-exit = echo bye", "hook-touch = /tmp/t print:touched")
    assert [(h.phase, h.family) for h in p.hooks] == [("asap", "hook"), ("as-user-atexit", "exec"), ("touch", "hook")]


def test_unshare_names():
    assert plan("unshare = ipc,uts", "attach-daemon = x").master.unshare == ("ipc", "uts")
    assert "unknown namespace 'cgroup'" in one_error("unshare = cgroup")


# --- legion ------------------------------------------------------------------------------------

def test_legion_seed_example_and_order_independence():
    p = plan("legion-node = mylegion 10.0.0.2:9191",
             "legion-mcast = mylegion 225.1.1.1:9191 90 bf-cbc:mysecret",
             "legion-smart-attach-daemon = mylegion /tmp/celery-beat.pid celery beat --pidfile=/tmp/celery-beat.pid",
             "legion-lord = mylegion cmd:echo lord", "legion-quorum = mylegion 2", "legion-scroll = mylegion hi there")
    lg = p.legions[0]
    assert (lg.name, lg.address, lg.valor, lg.cipher, lg.secret, lg.multicast) == (
        "mylegion", "225.1.1.1:9191", 90, "bf-cbc", "mysecret", True)
    assert [n.address for n in lg.nodes] == ["10.0.0.2:9191"] and lg.quorum == 2 and lg.scroll == "hi there"
    assert [(a.event, a.action, a.argument) for a in lg.actions] == [("lord", "cmd", "echo lord")]
    d = p.daemons[0]
    assert d.legion == "mylegion" and d.kind is DaemonKind.SMART and d.command.startswith("celery beat")


def test_legion_errors():
    assert "unknown cipher 'rot13'" in one_error("legion = l 127.0.0.1:9 1 rot13:x")
    assert "invalid legion syntax" in one_error("legion = l 127.0.0.1:9 1")
    assert "too small" in one_error("legion = l 127.0.0.1:9 -5 aes-128-cbc:x")
    assert "not a numeric IPv4 address" in one_error("legion = l example:9 1 aes-128-cbc:x")
    assert "unknown legion 'other'" in one_error("legion = l 127.0.0.1:9 1 aes-128-cbc:x", "legion-quorum = other 2")
    assert "not supported" in one_error("legion = l 127.0.0.1:9 1 aes-128-cbc:x", "legion-lord = l signal:3")
    e = one_error("legion-attach-daemon = nope cmd")
    assert e == "ns.ini:1: legion-attach-daemon: legion 'nope' is not defined by any legion/legion-mcast line (none defined)"
    assert "invalid legion daemon syntax" in one_error("legion-attach-daemon = abc")


def test_short_legion_daemon_values_are_still_legion_daemons():
    # uWSGI parses values shorter than 7 characters as non-legion (Q-D3)
    p = plan("legion = l 127.0.0.1:9 1 aes-128-cbc:x", "legion-attach-daemon = l x")
    assert p.daemons[0].legion == "l" and p.daemons[0].command == "x"


# --- converters -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [("TERM", 15), ("SIGTERM", 15), ("sigusr1", 10), ("9", 9), ("hup", 1)])
def test_signals(text, value):
    assert as_signal(text) == value


@pytest.mark.parametrize("text", ["0", "TERMINATE", "", "65", "-1"])
def test_bad_signals(text):
    with pytest.raises(ValueError):
        as_signal(text)


@pytest.mark.parametrize("text,value", [("", True), ("true", True), ("ON", True), ("1", True),
                                        ("false", False), ("no", False), ("Off", False), ("0", False)])
def test_bools(text, value):
    assert as_bool(text) is value


def test_kvlist_and_touch_list():
    assert parse_kvlist("cmd=a=b,x\\,y=1,,flag") == [("cmd", "a=b"), ("x,y", "1"), ("flag", None)]
    assert split_touch_list("/a;\"/b;c\";;/d\\;e") == ["/a", "/b;c", "/d;e"]


def test_attach_daemon2_legion_key_makes_a_legion_daemon():
    # uWSGI parses the key but never uses it: the daemon runs on every node (Q-D1)
    p = plan("legion = l 127.0.0.1:9 1 aes-128-cbc:x", "attach-daemon2 = cmd=x,legion=l,pidfile=/tmp/x.pid")
    assert p.daemons[0].legion == "l" and p.daemons[0].kind is DaemonKind.SMART
