"""The jail's network: a new network namespace with loopback up, a veth pair carrying traffic
between host and jail, and joining a named network namespace.

The "host" side of the veth lives in a network namespace the test makes (``nsa_*``): nsattach
runs in it through ``ip netns exec``, so no address is ever given to the real host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import wait_for
from rig import in_netns, ns_inode

pytestmark = pytest.mark.root


def test_namespace_net_brings_loopback_up(nsattach, rootfs, tmp_path):
    out = f"/tmp/{tmp_path.name}-lo"
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        namespace-net = true
        exec-in-jail = ip -o link show lo > {out}; ip -o link | wc -l >> {out}
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.daemon_pid("sleep")
    assert ns_inode(jail, "net") != ns_inode("self", "net")
    text = (rootfs / out.lstrip("/")).read_text().splitlines()
    assert ",UP" in text[0] or "<LOOPBACK,UP" in text[0]
    assert text[1].strip() == "1"                       # nothing but lo in there
    assert n.stop() == 0


def test_namespace_net_false_is_a_real_boolean(nsattach, rootfs):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        namespace-net = false
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.daemon_pid("sleep")
    assert ns_inode(jail, "net") == ns_inode("self", "net")     # uWSGI: any value enables it (Q-N6)
    assert n.stop() == 0


def test_veth_carries_traffic_between_host_and_jail(nsattach, rootfs, tmp_path, netns_name):
    host = netns_name("vhost")
    www = rootfs / "var/www" / tmp_path.name
    www.mkdir(parents=True)
    (www / "index.html").write_text("hello from the jail\n")
    out = f"/tmp/{tmp_path.name}-ping"
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}:nsaveth
        namespace-net = true
        namespace-veth = nsa_vh0:nsa_vj0
        namespace-veth-host-address = 10.231.7.1/30
        namespace-veth-address = 10.231.7.2/30
        namespace-veth-gateway = 10.231.7.1
        exec-in-jail = ping -c 1 -W 5 10.231.7.1 > {out} 2>&1
        exec-in-jail = ip route >> {out}
        attach-daemon = httpd -f -p 10.231.7.2:8080 -h /var/www/{tmp_path.name}
    """, prefix=("ip", "netns", "exec", host))
    jail = n.jail_pid()
    n.daemon_pid("httpd")
    text = (rootfs / out.lstrip("/")).read_text()
    assert "1 packets received" in text                           # jail -> host
    assert "default via 10.231.7.1 dev nsa_vj0" in text

    def fetch():
        r = in_netns(host, sys.executable, "-c", "import urllib.request, sys; sys.stdout.write(urllib.request."
                     "urlopen('http://10.231.7.2:8080/index.html', timeout=2).read().decode())")
        return r.stdout if r.returncode == 0 else None
    assert wait_for(fetch, timeout=10, what="the jail's web server over the veth") == "hello from the jail\n"
    links = in_netns(host, "ip", "-o", "link").stdout
    assert "nsa_vh0" in links and "nsa_vj0" not in links          # the jail end lives in the jail
    assert n.stop() == 0
    assert "nsa_vh0" not in in_netns(host, "ip", "-o", "link").stdout
    assert "nsa_vh0" not in os.listdir("/sys/class/net")


def test_joining_a_named_network_namespace(nsattach, rootfs, netns_name):
    name = netns_name("join")
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        namespace-netns = {name}
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.daemon_pid("sleep")
    assert ns_inode(jail, "net") == os.stat(f"/run/netns/{name}").st_ino
    assert n.stop() == 0


def test_joining_a_missing_network_namespace_fails_clearly(nsattach, rootfs):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        namespace-netns = nsa_missing
        attach-daemon = sleep 1000
    """)
    assert n.wait_exit() == 1
    assert "open network namespace /run/netns/nsa_missing: No such file or directory" in n.log()
    assert "ip netns add nsa_missing" in n.log()
    assert not os.path.exists("/run/netns/nsa_missing")        # never created by accident


def test_veth_name_clash_fails_and_kills_the_jail(nsattach, rootfs, netns_name):
    host = netns_name("clash")
    subprocess.run(["ip", "netns", "exec", host, "ip", "link", "add", "nsa_c0", "type", "veth", "peer", "name", "nsa_c1"],
                   check=True)
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        namespace-net = true
        namespace-veth = nsa_c0:nsa_cj0
        attach-daemon = sleep 1000
    """, prefix=("ip", "netns", "exec", host))
    assert n.wait_exit() == 1
    log = n.log()
    assert "create veth nsa_c0:nsa_cj0: File exists [EEXIST]" in log and "ip link del nsa_c0" in log
    assert "killing the jailed master" in log and "spawning" not in log
