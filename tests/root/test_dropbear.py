"""The seed's dropbear example end to end: an ssh entry into a jail whose hostname is testns.

The configuration is uWSGI's documented one (tests/data/seed/7-dropbear.ini) with the jail
directory replaced by a busybox root filesystem built here, plus the read-only keep-mount of
the host's /usr that gives the jail dropbear and its libraries (docs/jail.md). nsattach runs
inside a network namespace the test makes, so port 1022 is never taken on the real host."""

from __future__ import annotations

import os
import subprocess

import pytest

from harness import alive, wait_for
from rig import in_netns

pytestmark = pytest.mark.root

SEED = os.path.join(os.path.dirname(__file__), "..", "data", "seed", "7-dropbear.ini")


def test_seed_dropbear_example(nsattach, rootfs, tmp_path, netns_name):
    seed = open(SEED).read()
    assert "namespace = /ns/001/:testns" in seed
    ini = seed.replace("/ns/001/", f"{rootfs}/") + "namespace-keep-mount-ro = /usr\ncontrol-socket = off\n"

    (rootfs / "dev/pts").mkdir(exist_ok=True)
    keys = rootfs / "etc/dropbear"
    keys.mkdir(exist_ok=True)
    if not (keys / "dropbear_ed25519_host_key").exists():
        subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(keys / "dropbear_ed25519_host_key")],
                       check=True, capture_output=True)
    client_key = tmp_path / "client_key"
    gen = subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(client_key)], check=True,
                         capture_output=True, text=True)
    public = [line for line in gen.stdout.splitlines() if line.startswith("ssh-ed25519 ")][0]
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(public + "\n")
    os.chmod(ssh / "authorized_keys", 0o600)
    home = tmp_path / "home"
    home.mkdir()

    net = netns_name("ssh")
    n = nsattach(ini, prefix=("ip", "netns", "exec", net))
    jail = n.jail_pid()
    n.daemon_pid("dropbear")
    log = n.log()
    assert 'running "chown -R www-data /etc/dropbear" (as root)...' in log
    assert os.stat(keys / "dropbear_ed25519_host_key").st_uid == 33          # the exec-as-root ran, in the jail
    assert "ignored uWSGI application-server options" in log                 # socket = :3031

    def login():
        r = in_netns(net, "dbclient", "-y", "-i", str(client_key), "-p", "1022", "root@127.0.0.1", "hostname",
                     env={**os.environ, "HOME": str(home)}, stdin=subprocess.DEVNULL)
        return r.stdout if r.returncode == 0 else None

    assert wait_for(login, timeout=15, interval=0.2, what="an ssh login into the jail") == "testns\n"
    r = in_netns(net, "dbclient", "-y", "-i", str(client_key), "-p", "1022", "root@127.0.0.1",
                 "ps -o pid,comm; cat /proc/self/mountinfo | cut -d' ' -f5",
                 env={**os.environ, "HOME": str(home)}, stdin=subprocess.DEVNULL)
    lines = r.stdout.split("\n")
    procs = [line.split() for line in lines[1:] if line.strip() and not line.startswith("/")]
    assert procs[0][0] == "1" and procs[0][1].startswith("python")      # the jailed master, PID 1
    assert max(int(p[0]) for p in procs) < 50 and {"dropbear", "sh", "ps"} <= {p[1] for p in procs}
    assert {"/", "/proc", "/dev/pts", "/usr"} == {line for line in lines if line.startswith("/")}

    assert n.stop() == 0
    wait_for(lambda: not alive(jail), what="the jail to be gone")
