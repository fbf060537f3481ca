"""The pure parts of the jail work, no root needed: the plan's jail options and checks, the
jail's account files, mountinfo decoding, the hook flag tables, the monitor's channel."""

from __future__ import annotations

import socket

import pytest

from nsattach.config.model import Identity
from nsattach.config.plan import build_plan, jail_accounts, jail_group_ids
from nsattach.config.raw import Entry, RawConfig
from nsattach.errors import ConfigError, Origin
from nsattach.startup import jail_key, recv_message, restart_needed, send_message
from nsattach.system import hooks, linux
from nsattach.system.jail import decode_mount_field, is_under, parse_mountinfo

PASSWD = "root:x:0:0:root:/root:/bin/sh\njailuser:x:5000:5000::/home/jailuser:/bin/sh\n"
GROUP = "root:x:0:\njailuser:x:5000:\nextra:x:5001:jailuser,other\nother:x:5002:root\n"


def raw(*lines: str) -> RawConfig:
    entries = []
    for n, line in enumerate(lines, 1):
        key, _, value = line.partition("=")
        entries.append(Entry(key.strip(), value.strip(), Origin("ns.ini", n)))
    return RawConfig(entries=entries, files=["/etc/ns.ini"], placeholders=set())


def plan(*lines, cwd="/srv"):
    return build_plan(raw(*lines), cwd=cwd)


def errors(*lines, cwd="/srv") -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_plan(raw(*lines), cwd=cwd)
    return [str(p) for p in info.value.problems]


@pytest.fixture
def jailroot(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    return tmp_path


def test_jail_accounts_read_the_jails_files(jailroot):
    acc = jail_accounts(str(jailroot))
    assert acc.getpwnam("jailuser").pw_uid == 5000
    assert acc.getpwuid(0).pw_name == "root"
    assert acc.getgrnam("extra").gr_mem == ["jailuser", "other"]
    with pytest.raises(KeyError):
        acc.getpwnam("nosuchuser")
    assert jail_group_ids(str(jailroot), "jailuser") == [5001]


def test_daemon_names_resolve_in_the_jail_with_groups(jailroot):
    p = plan(f"namespace = {jailroot}", "attach-daemon2 = cmd=sleep 1,uid=jailuser")
    assert p.daemons[0].identity == Identity(uid=5000, gid=5000, user="jailuser", home="/home/jailuser",
                                             groups=(5000, 5001))
    e = errors(f"namespace = {jailroot}", "attach-daemon2 = cmd=sleep 1,uid=hostonlyuser")
    assert "user 'hostonlyuser' not found" in e[0] and f"{jailroot}/etc/passwd" in e[0]


def test_relative_paths_of_a_jailed_master_are_jail_paths(jailroot):
    p = plan(f"namespace = {jailroot}", "chdir = srv", "touch-reload = reload.txt",
             "attach-daemon2 = cmd=sleep 1,pidfile=run/x.pid", "hook-touch = t print:x", "pidfile = m.pid")
    assert p.master.chdir == "/srv"
    assert p.master.touch_reload == ("/reload.txt",)      # against the jail's /, not the host's cwd
    assert p.daemons[0].pidfile == "/srv/run/x.pid"
    assert p.hooks[0].value == "/t print:x"
    assert p.master.pidfile == "/srv/m.pid"          # the pidfile is the monitor's, on the host


def test_identity_rules_under_a_master_drop():
    p = plan("uid = nobody", "attach-daemon2 = cmd=a,uid=nobody", "attach-daemon2 = cmd=b")
    assert all(d.identity == Identity() for d in p.daemons)         # the master's own account
    e = errors("uid = nobody", "attach-daemon2 = cmd=a,uid=root")
    assert "can then no longer switch to uid=0(root)" in e[0]
    e = errors("uid = nobody", "attach-daemon2 = cmd=a,ns_pid=1")
    assert "ns_pid needs root" in e[0]
    assert plan("uid = 0", "attach-daemon2 = cmd=a,uid=nobody").daemons[0].identity.uid == 65534


def test_namespace_options():
    p = plan("namespace = /srv/jail:box", "namespace-keep-mount = /data", "namespace-keep-mount-ro = /usr",
             "namespace-keep-mount = /srv/jail/nfs", "namespace-private-dev = 1", "namespace-net = true",
             "namespace-veth = nsa_h0:nsa_j0", "namespace-veth-address = 10.0.0.2/30",
             "namespace-veth-host-address = 10.0.0.1/30", "namespace-veth-gateway = 10.0.0.1")
    ns = p.namespace
    assert [(k.source, k.target, k.readonly) for k in ns.keep_mounts] == [
        ("/data", "/data", False), ("/usr", "/usr", True), ("/srv/jail/nfs", "/nfs", False)]
    assert ns.private_dev and ns.net and ns.value == "/srv/jail:box"
    assert (ns.veth.host_ifname, ns.veth.jail_ifname, ns.veth.gateway) == ("nsa_h0", "nsa_j0", "10.0.0.1")
    assert plan("namespace = /srv/jail", "namespace-netns = nsa_x").namespace.netns == "nsa_x"


@pytest.mark.parametrize("lines,message", [
    (("namespace = /j", "namespace-veth = h0:j0"), "needs namespace-net = true"),
    (("namespace = /j", "namespace-net = 1", "namespace-veth = h0"), "expected HOST_IF:JAIL_IF"),
    (("namespace = /j", "namespace-net = 1", "namespace-veth = h0:j0", "namespace-veth-address = 10.0.0.2"),
     "needs a prefix length"),
    (("namespace = /j", "namespace-net = 1", "namespace-veth = h0:j0", "namespace-veth-gateway = 10.0.0.1"),
     "needs namespace-veth-address"),
    (("namespace = /j", "namespace-net = 1", "namespace-netns = x"), "exclude each other"),
    (("namespace = /j", "namespace-netns = ../x"), "not a network namespace name"),
    (("namespace-private-dev = 1",), "needs a namespace"),
    (("namespace-keep-mount-ro = /usr",), "needs a namespace"),
    (("namespace = /j", "namespace-keep-mount = /x:/proc"), "cannot bind over the jail's /proc"),
    (("unshare = io",), "CLONE_IO is not a flag unshare(2) accepts"),
    (("unshare = user",), "does not support unshare = user"),
    (("attach-daemon2 = cmd=x,pidfile=/p,ns_pid=1",), "ns_pid cannot be combined with pidfile"),
])
def test_namespace_option_errors(lines, message):
    assert any(message in e for e in errors(*lines)), errors(*lines)


def test_post_jail_hooks_without_a_jail_are_warned_about():
    p = plan("exec-post-jail = true", "attach-daemon = x")
    assert any("post-jail hooks run only with namespace" in w for w in p.warnings)
    p = plan("exec-post-jail = true", "unshare = uts", "attach-daemon = x")
    assert not any("post-jail" in w for w in p.warnings)


def test_mountinfo_escapes_and_components():
    assert decode_mount_field(r"/srv/my\040dir\011x\134y") == "/srv/my dir\tx\\y"
    assert decode_mount_field(r"/a\04") == r"/a\04"
    line = r"36 35 98:0 /mnt1 /mnt\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    (entry,) = parse_mountinfo(line)
    assert (entry.mount_point, entry.fstype, entry.source, entry.root) == ("/mnt two", "ext3", "/dev/root", "/mnt1")
    assert is_under("/ns/001/x", "/ns/001") and not is_under("/ns/0012/x", "/ns/001")
    assert is_under("/anything", "/")


def test_mount_and_umount_flags_are_separate_tables():
    # uWSGI shares one table: on mount, "detach" meant MS_NOSUID and "force" MS_RDONLY (Q-H3)
    assert "detach" not in hooks.MOUNT_FLAGS and "force" not in hooks.MOUNT_FLAGS
    assert hooks.UMOUNT_FLAGS["detach"] == linux.MNT_DETACH and hooks.MOUNT_FLAGS["ro"] == linux.MS_RDONLY


def test_exec_status_descriptions():
    assert hooks.describe_status(3 << 8) == "exited with non-zero code: 3"
    assert hooks.describe_status(9) == "was killed by signal 9 (SIGKILL)"


def test_monitor_channel_frames_and_eof():
    a, b = socket.socketpair()
    send_message(a, ("plan", {"x": 1}))
    send_message(a, ("go",))
    assert recv_message(b, 1) == ("plan", {"x": 1})
    assert recv_message(b, 1) == ("go",)
    a.close()
    with pytest.raises(EOFError):
        recv_message(b, 1)
    b.close()


def test_what_a_reload_cannot_apply():
    old = plan("namespace = /j:a", "namespace-keep-mount = /usr", "attach-daemon = x")
    same = build_plan(raw("vacuum = false", "namespace = /j:a", "namespace-keep-mount = /usr", "attach-daemon = y"), cwd="/srv")
    assert jail_key(old) == jail_key(same)              # other line numbers, other daemons: same jail
    new = plan("namespace = /j:b", "namespace-keep-mount = /usr", "attach-daemon = x", "uid = 65534", "gid = 65534",
               "hook-as-root = print:x")
    assert restart_needed(old, new) == ["namespace", "uid/gid", "hooks"]
