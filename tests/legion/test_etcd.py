"""Legion on etcd with real etcd members and real nsattach masters, all on 127.0.0.1.

The legion daemon is a guard: it takes an exclusive flock on a shared file for as long as it
lives (the kernel drops the lock the instant the process is gone) and records its start, its
fencing term and its pid. A guard that finds the lock taken records OVERLAP: two legion daemons
at once, which must never happen. Timestamps are wall-clock seconds of this one machine.

Timing: lease TTL 8 s, reload-mercy 1 s: a lord that cannot renew steps down at most
8 - 1 - 3 = 4 s after its last renewal was sent, its daemons are SIGKILLed a second later, at
least 3 s before etcd can expire the lease.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from harness import Nsattach, ProcessRegistry, alive, wait_for

pytestmark = pytest.mark.timeout(150)

TTL, MERCY = 8, 1
GUARD = r'''
import fcntl, os, sys, time
lock = open(sys.argv[1], "a")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    with open(sys.argv[2], "a") as f:
        f.write(f"OVERLAP {sys.argv[3]} {time.time()} {os.getpid()}\n")
    sys.exit(3)
with open(sys.argv[2], "a") as f:
    f.write(f"start {sys.argv[3]} {os.environ.get('NSATTACH_LEGION_TERM')} {time.time()} {os.getpid()}\n")
time.sleep(1000000)
'''


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def etcd_post(url: str, path: str, body: dict, timeout: float = 0.5, context=None, token=None) -> dict | None:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return json.loads(resp.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return None


class Etcd:
    def __init__(self, tmp: Path, name: str, client: int, peer: int, cluster: str, extra: tuple[str, ...] = (),
                 scheme: str = "http"):
        self.name = name
        self.url = f"{scheme}://127.0.0.1:{client}"
        self.data = tmp / f"etcd-{name}"
        self.log_path = tmp / f"etcd-{name}.log"
        self.args = [shutil.which("etcd") or "etcd", "--name", name, "--data-dir", str(self.data),
                     "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                     "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                     "--initial-cluster", cluster, "--initial-cluster-state", "new",
                     "--initial-cluster-token", cluster,
                     "--heartbeat-interval", "100", "--election-timeout", "1000", *extra]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Etcd":
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()        # SIGKILL ends a stopped process too
            self.proc.wait(10)
            self.log_file.close()


@pytest.fixture
def etcds(tmp_path):
    """``etcds(n)`` -> n started etcd members forming one cluster, healthy; killed afterwards."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed (scripts/setup.sh installs Debian's etcd-server)", pytrace=False)
    made: list[Etcd] = []

    def make(n: int, extra: tuple[str, ...] = (), scheme: str = "http", ready=None) -> list[Etcd]:
        ports = free_ports(2 * n)
        names = [f"m{len(made) + i}" for i in range(n)]
        cluster = ",".join(f"{nm}=http://127.0.0.1:{ports[2 * i + 1]}" for i, nm in enumerate(names))
        members = [Etcd(tmp_path, nm, ports[2 * i], ports[2 * i + 1], cluster, extra, scheme)
                   for i, nm in enumerate(names)]
        made.extend(members)
        for m in members:
            m.start()
        check = ready or (lambda m: etcd_post(m.url, "/v3/kv/range", {"key": "eA=="}) is not None)
        for m in members:
            wait_for(lambda m=m: check(m), timeout=20, interval=0.1, what=f"etcd member {m.name} to answer")
        return members

    try:
        yield make
    finally:
        for m in made:
            m.close()


class Node:
    def __init__(self, tmp: Path, registry: ProcessRegistry, index: int, valor: int, urls: list[str],
                 extra: str = ""):
        self.index = index
        self.dir = tmp / f"node{index}"
        self.dir.mkdir()
        self.records = tmp / "guard.log"
        guard = tmp / "guard.py"
        guard.write_text(GUARD)
        self.master = Nsattach(self.dir, registry, f"""
            [uwsgi]
            reload-mercy = {MERCY}
            legion-etcd = L {",".join(urls)} {valor}
            legion-etcd-ttl = L {TTL}
            legion-attach-daemon = L exec {sys.executable} {guard} {tmp / "guard.lock"} {self.records} node{index}
            {extra}
            """, name=f"node{index}.ini")

    def start(self) -> "Node":
        self.master.start()
        return self

    def status(self) -> dict:
        out = self.master.ctl("status", "--json", timeout=10)
        assert out.returncode == 0, out.stderr + out.stdout
        return json.loads(out.stdout)["legions"]["L"]

    def log(self) -> str:
        return self.master.log()


def guard_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        kind, node, *rest = line.split()
        if kind == "start":
            rows.append({"kind": kind, "node": node, "term": int(rest[0]), "at": float(rest[1]), "pid": int(rest[2])})
        else:
            rows.append({"kind": kind, "node": node, "at": float(rest[0]), "pid": int(rest[1])})
    return rows


def running_guards(path: Path, registry: ProcessRegistry) -> list[dict]:
    live = []
    for r in guard_records(path):
        if r["kind"] == "start" and alive(r["pid"]):
            registry.add(r["pid"])
            live.append(r)
    return live


def assert_no_overlap(path: Path) -> None:
    overlaps = [r for r in guard_records(path) if r["kind"] == "OVERLAP"]
    assert not overlaps, f"two legion daemons at once: {overlaps}"


def one_guard_on(node: str, path: Path, registry: ProcessRegistry, timeout: float, nodes=()) -> dict:
    def check():
        live = running_guards(path, registry)
        return live[0] if len(live) == 1 and live[0]["node"] == node else None

    try:
        return wait_for(check, timeout=timeout, interval=0.05, what=f"the legion daemon on {node} only")
    except AssertionError:
        logs = "\n\n".join(f"node{n.index}:\n{n.log()[-4000:]}" for n in nodes)
        raise AssertionError(f"no single legion daemon on {node}; records: {guard_records(path)}\n{logs}") from None


def lease_state(urls: list[str], lease_hex: str) -> bool | None:
    """True: etcd still has the lease; False: it is gone; None: no member answered."""
    for url in urls:
        reply = etcd_post(url, "/v3/lease/timetolive", {"ID": str(int(lease_hex, 16))}, timeout=0.3)
        if reply is not None and "header" in reply:
            return int(reply.get("TTL", -1)) > 0
    return None


def watch_lease_until_gone(urls: list[str], lease_hex: str, timeout: float, on_poll=None) -> float:
    """Poll until etcd no longer has the lease; return the last wall time it was seen alive."""
    last_alive = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        t = time.time()
        state = lease_state(urls, lease_hex)
        if state:
            last_alive = t
        elif state is False:
            assert last_alive is not None, "the lease was already gone at the first look"
            return last_alive
        if on_poll is not None:
            on_poll()
        time.sleep(0.05)
    raise AssertionError(f"lease {lease_hex} still alive after {timeout} s")


@pytest.fixture
def nodes(tmp_path, registry):
    made: list[Node] = []

    def make(*args, **kw) -> Node:
        n = Node(tmp_path, registry, len(made), *args, **kw)
        made.append(n)
        return n

    try:
        yield make
    finally:
        for n in made:
            if n.master.proc is not None:
                n.master.children()
            n.master.close()


# --- tests --------------------------------------------------------------------------------------

def test_one_lord_and_failover_only_after_the_dead_lords_lease_expired(etcds, nodes, registry, tmp_path):
    (etcd,) = etcds(1)
    cluster = [nodes(valor, [etcd.url]) for valor in (10, 20, 30)]
    for n in cluster:
        n.start()
    records = cluster[0].records
    first = one_guard_on("node2", records, registry, timeout=20, nodes=cluster)

    lord = cluster[2].status()
    assert lord["backend"] == "etcd" and lord["lord"] and lord["term"] == first["term"] > 0
    for n in cluster[:2]:       # the followers see it at their next poll (every second)
        st = wait_for(lambda n=n: (lambda st: st if (st["current_lord"] or {}).get("id") == lord["id"] else None)(
            n.status()), timeout=5, interval=0.2, what=f"node{n.index} to see the lord")
        assert not st["lord"] and st["term"] is None and st["current_lord"]["term"] == first["term"]
        assert len(st["members"]) == 3
    env = Path(f"/proc/{first['pid']}/environ").read_bytes()
    assert f"NSATTACH_LEGION_TERM={first['term']}".encode() in env and b"NSATTACH_LEGION=L" in env

    # the lord's master dies (its dumb daemon with it); its lease lives on until etcd expires it
    os.kill(cluster[2].master.pid, signal.SIGKILL)
    killed = time.time()
    wait_for(lambda: not alive(first["pid"]), timeout=5, what="the old lord's daemon to die with its master")
    last_alive = watch_lease_until_gone([etcd.url], lord["lease"], timeout=TTL + 5)
    assert last_alive - killed >= TTL - 3        # renewed at most keep-alive interval before the kill
    second = one_guard_on("node1", records, registry, timeout=10, nodes=cluster)
    assert second["at"] > last_alive, "the next lord started while the old lease was still alive"
    assert second["term"] > first["term"]
    assert "i am now the Lord of the Legion L" in cluster[1].log()
    assert_no_overlap(records)


def test_cut_off_lord_stops_before_its_lease_expires_and_no_quorum_means_no_lord(etcds, nodes, registry, tmp_path):
    members = etcds(3)
    # each master talks to its own member only, so pausing a member cuts exactly one master off
    cluster = [nodes(valor, [members[i].url], extra=f"attach-daemon = exec sleep 3000{i}")
               for i, valor in enumerate((10, 20, 30))]
    for n in cluster:
        n.start()
    records = cluster[0].records
    first = one_guard_on("node2", records, registry, timeout=20, nodes=cluster)
    lease = cluster[2].status()["lease"]

    def plain_daemon(i: int) -> list[int]:
        pids = [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", f"3000{i}"]]
        for pid in pids:
            registry.add(pid)
        return pids

    # the lord's etcd member hangs: requests to it connect, then nothing ever comes back
    members[2].pause()
    paused = time.time()
    # meanwhile supervision goes on: a crashed dumb daemon is respawned at once, although
    # the master has etcd requests hanging (polls every second, each waits up to 2 s)
    time.sleep(1.5)
    (old_pid,) = wait_for(lambda: plain_daemon(2), timeout=5, what="node2's plain daemon")
    os.kill(old_pid, signal.SIGKILL)
    t_kill = time.monotonic()
    new_pid = wait_for(lambda: [p for p in plain_daemon(2) if p != old_pid and alive(p)], timeout=5,
                       interval=0.01, what="the plain daemon's respawn")
    assert time.monotonic() - t_kill < 1.0, "a hanging etcd delayed a respawn"
    assert new_pid

    # the lord steps down (daemon SIGKILLed at the latest) while etcd still has its lease
    dead_at = []

    def note_death():
        if not dead_at and not alive(first["pid"]):
            dead_at.append(time.time())

    last_alive = watch_lease_until_gone([members[0].url, members[1].url], lease, timeout=TTL + 10,
                                        on_poll=note_death)
    note_death()
    assert dead_at and dead_at[0] < last_alive, "the cut-off lord's daemon outlived its lease"
    assert dead_at[0] - paused <= TTL - MERCY - 3 + MERCY + 1
    second = one_guard_on("node1", records, registry, timeout=10, nodes=cluster)
    assert second["at"] > last_alive and second["term"] > first["term"]
    assert "stepping down now, before the lease can expire" in cluster[2].log()

    # back online: valor 30 beats 20; node1 stops its daemon, then hands over
    members[2].resume()
    third = one_guard_on("node2", records, registry, timeout=TTL + 10, nodes=cluster)
    assert third["term"] > second["term"]
    assert not alive(second["pid"])
    assert_no_overlap(records)

    # two of three members gone: no quorum, so no lease renews and nobody becomes lord
    members[0].pause()
    members[1].pause()
    wait_for(lambda: not running_guards(records, registry), timeout=TTL + 2, interval=0.1,
             what="every legion daemon to stop without quorum")
    quiet_until = time.monotonic() + 3
    while time.monotonic() < quiet_until:
        assert not running_guards(records, registry), "a lord was elected without quorum"
        time.sleep(0.1)
    for n in cluster:
        st = n.status()
        assert not st["lord"] and st["term"] is None
    assert "etcd unreachable" in cluster[2].log()
    assert_no_overlap(records)
    for m in members[:2]:
        m.resume()


def make_certs(tmp: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("nsattach test CA")).issuer_name(name("nsattach test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": tmp / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # etcd's own gateway connects to its gRPC port with the server certificate: it needs both usages
    for who, usage in (("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       ("client", [ExtendedKeyUsageOID.CLIENT_AUTH])):
        key = ec.generate_private_key(ec.SECP256R1())
        # a client certificate without CommonName: etcd's gateway refuses one that has a CN, which it
        # could not pass on to etcd's certificate-based authentication (passwords do the auth here)
        subject = name(f"nsattach-{who}") if who == "server" else x509.Name([])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[who] = tmp / f"{who}.pem"
        out[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}-key"] = tmp / f"{who}-key.pem"
        out[f"{who}-key"].write_bytes(pem_key(key))
    return out


def test_tls_client_certificates_and_password_auth(etcds, nodes, registry, tmp_path):
    import ssl

    certs = make_certs(tmp_path)
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    context.load_cert_chain(str(certs["client"]), str(certs["client-key"]))
    (etcd,) = etcds(1, extra=("--cert-file", str(certs["server"]), "--key-file", str(certs["server-key"]),
                              "--trusted-ca-file", str(certs["ca"]), "--client-cert-auth"), scheme="https",
                    ready=lambda m: etcd_post(m.url, "/v3/kv/range", {"key": "eA=="}, context=context) is not None)
    tls = ["--endpoints", etcd.url, "--cacert", str(certs["ca"]), "--cert", str(certs["client"]),
           "--key", str(certs["client-key"])]
    ctl = shutil.which("etcdctl") or "etcdctl"
    for words in (["user", "add", "root:rootpw"], ["auth", "enable"]):
        done = subprocess.run([ctl, *tls, *words], capture_output=True, text=True, timeout=20,
                              env={**os.environ, "ETCDCTL_API": "3"})
        assert done.returncode == 0, done.stderr

    tls_lines = (f"legion-etcd-cacert = L {certs['ca']}\nlegion-etcd-cert = L {certs['client']}\n"
                 f"legion-etcd-key = L {certs['client-key']}")
    good = nodes(5, [etcd.url], extra=f"{tls_lines}\nlegion-etcd-user = L root:rootpw")
    bad = nodes(9, [etcd.url], extra=f"{tls_lines}\nlegion-etcd-user = L root:wrong")
    good.start()
    bad.start()
    guard = one_guard_on("node0", good.records, registry, timeout=20, nodes=[good, bad])
    st = good.status()
    assert st["lord"] and st["term"] == guard["term"] and st["etcd"]["reachable"]
    bad.master.wait_log(r"authentication as 'root' failed", timeout=10)
    assert not bad.status()["lord"]
    # the keys really are in etcd, under the lease
    token = etcd_post(etcd.url, "/v3/auth/authenticate", {"name": "root", "password": "rootpw"},
                      context=context)["token"]
    reply = etcd_post(etcd.url, "/v3/kv/range", {"key": "L25zYXR0YWNoL2xlZ2lvbi9ML2xvcmQ="},   # /nsattach/legion/L/lord
                      context=context, token=token)
    assert reply["kvs"][0]["create_revision"] == str(guard["term"])
    assert int(reply["kvs"][0]["lease"]) == int(st["lease"], 16)


def test_reload_and_stop_hand_the_lease_back_at_once(etcds, nodes, registry, tmp_path):
    (etcd,) = etcds(1)
    a, b = nodes(20, [etcd.url]), nodes(10, [etcd.url])
    a.start()
    b.start()
    records = a.records
    first = one_guard_on("node0", records, registry, timeout=20, nodes=[a, b])
    old_id = a.status()["id"]

    # a reload that changes the etcd legion: the old identity leaves once its daemon is gone,
    # the new one (valor 30) takes over; node1 never leads in between
    a.master.config.write_text(a.master.config.read_text().replace(" 20\n", " 30\n"))
    a.master.signal(signal.SIGHUP)
    second = wait_for(lambda: next((r for r in running_guards(records, registry) if r["pid"] != first["pid"]), None),
                      timeout=15, interval=0.05, what="the legion daemon after the reload")
    assert second["node"] == "node0" and second["term"] > first["term"]
    st = a.status()
    assert st["lord"] and st["valor"] == 30 and st["id"] != old_id
    assert "node vm left Legion L" in a.log()

    # a normal stop revokes the lease as soon as the daemon is gone: no wait for the TTL
    stopped = time.time()
    a.master.stop(timeout=10)
    third = one_guard_on("node1", records, registry, timeout=TTL, nodes=[a, b])
    assert third["at"] - stopped < TTL / 2 and third["term"] > second["term"]
    assert [r["node"] for r in guard_records(records) if r["kind"] == "start"] == ["node0", "node0", "node1"]
    assert_no_overlap(records)
