"""A real uWSGI 2.0 node and a LegionService agree on the Lord, in both valor directions, and
honour each other's death announcements (uwsgi-spec §7.11 checklist).

uWSGI runs in "no-workers" mode (``master = true``, no socket, no plugin), which is enough for
its legion thread. It is stopped with SIGINT: SIGTERM means reload to a uWSGI 2.0 master.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from legion_loop import MiniLoop, free_udp_ports
from nsattach.config.model import LegionActionPlan, LegionNodePlan, LegionPlan, LegionSettings
from nsattach.errors import Origin
from nsattach.legion.node import LegionService

UWSGI = "/usr/bin/uwsgi"
pytestmark = pytest.mark.skipif(not os.access(UWSGI, os.X_OK), reason=f"{UWSGI} is not installed (Debian: uwsgi-core)")

O = Origin("test.ini", 1)
SETTINGS = LegionSettings(freq=1, tolerance=3)
OUR_NAME = "nsattach-interop"

# OpenSSL 3 hides Blowfish in the legacy provider; uWSGI needs it switched on for bf-cbc (Q-L9)
OPENSSL_LEGACY_CONF = """\
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
legacy = legacy_sect
[default_sect]
activate = 1
[legacy_sect]
activate = 1
"""


class UwsgiNode:
    def __init__(self, tmp: Path, port: int, peer: int, valor: int, cipher: str, *, scroll: str | None = None):
        self.tmp = tmp
        self.lord_file = tmp / "uwsgi-is-lord"
        self.log_path = tmp / "uwsgi.log"
        lines = [
            "[uwsgi]",
            "master = true",
            f"legion = test 127.0.0.1:{port} {valor} {cipher}",
            f"legion-node = test 127.0.0.1:{peer}",
            "legion-freq = 1",
            "legion-tolerance = 3",
            f"legion-lord = test cmd:touch {self.lord_file}",
            f"legion-unlord = test cmd:rm -f {self.lord_file}",
        ]
        if scroll:
            lines.append(f"legion-scroll = test {scroll}")
        ini = tmp / "uwsgi.ini"
        ini.write_text("\n".join(lines) + "\n")
        env = dict(os.environ)
        if cipher.startswith("bf-"):
            conf = tmp / "openssl-legacy.cnf"
            conf.write_text(OPENSSL_LEGACY_CONF)
            env["OPENSSL_CONF"] = str(conf)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([UWSGI, "--ini", str(ini)], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self, fragment: str) -> bool:
        return fragment in self.text()

    def stop(self) -> None:
        """SIGINT = stop (SIGTERM would be a reload); SIGKILL after a deadline."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def rig(tmp_path):
    """``rig(our_valor, uwsgi_valor, cipher)`` -> (loop, our service, uwsgi node); all torn down after."""
    loop = MiniLoop()
    started: list = []

    def make(our_valor: int, uwsgi_valor: int, cipher: str = "aes-128-cbc:secret", *, scroll=None, uwsgi_scroll=None,
             uwsgi_lord_first: bool = False):
        ours, theirs = free_udp_ports(2)
        if uwsgi_lord_first:
            node = UwsgiNode(tmp_path, theirs, ours, uwsgi_valor, cipher, scroll=uwsgi_scroll)
            started.append(node)
            assert loop.run_until(lambda: node.lord_file.exists() or node.proc.poll() is not None, 10), node.text()
            assert node.proc.poll() is None, node.text()
        name, secret_iv = cipher.split(":", 1)
        secret, _, iv = secret_iv.partition(" ")
        plan = LegionPlan(name="test", address=f"127.0.0.1:{ours}", valor=our_valor, cipher=name, secret=secret,
                          iv=iv or None, multicast=False, origin=O, scroll=scroll,
                          nodes=(LegionNodePlan(f"127.0.0.1:{theirs}", O),),
                          actions=(LegionActionPlan("lord", "log", "our lord hook", O),))
        host = loop.host(OUR_NAME)
        svc = LegionService([plan], SETTINGS, host, hostname=OUR_NAME, pid=os.getpid())
        host.service = svc
        started.append(svc)
        svc.start()
        if not uwsgi_lord_first:
            node = UwsgiNode(tmp_path, theirs, ours, uwsgi_valor, cipher, scroll=uwsgi_scroll)
            started.append(node)
        return loop, svc, node

    yield make
    for item in reversed(started):
        if isinstance(item, UwsgiNode):
            item.stop()
        else:
            item.reload_stop()
    loop.close()


def our_status(svc) -> dict:
    return svc.status()["test"]


def agreed_with_two(svc) -> bool:
    st = our_status(svc)
    return st["agreed"] and st["votes"] == 2


def wait_uwsgi_running(loop, node: UwsgiNode) -> None:
    assert loop.run_until(lambda: node.logged("legion manager thread enabled") or node.proc.poll() is not None, 10)
    assert node.proc.poll() is None, node.text()


@pytest.mark.parametrize("cipher", ["aes-128-cbc:secret", "bf-cbc:a:secret:with:colons some-iv"])
def test_we_are_lord_when_our_valor_is_higher_and_uwsgi_takes_over_on_our_death(rig, cipher):
    loop, svc, node = rig(our_valor=20, uwsgi_valor=10, cipher=cipher, scroll="nsattach scroll")
    wait_uwsgi_running(loop, node)
    our_uuid = our_status(svc)["uuid"]
    ok = loop.run_until(lambda: svc.is_lord("test") and agreed_with_two(svc)
                        and node.logged(f"(valor: 20 uuid: {our_uuid} checksum: {our_status(svc)['checksum']} votes: 2)"), 10)
    assert ok, (node.text(), our_status(svc), svc.host.logs)
    member = our_status(svc)["members"][0]
    assert member["valor"] == 10 and member["vote_uuid"] == our_uuid
    assert not node.lord_file.exists() and not node.logged("i am now the Lord")
    if not cipher.startswith("aes-128-cbc"):
        return                              # the death rules do not depend on the cipher

    t0 = time.monotonic()
    svc.stop()                              # death announcement
    ok = loop.run_until(lambda: node.logged(f"node: {OUR_NAME} valor: 20 uuid: {our_uuid} announced its death to Legion test")
                        and node.lord_file.exists(), 6)
    assert ok, node.text()
    assert not node.logged(f"uuid: {our_uuid} left Legion test")    # dropped at once, not expired
    assert node.logged("i am now the Lord of the Legion test")
    assert time.monotonic() - t0 < 6


def test_uwsgi_is_lord_when_its_valor_is_higher_and_we_take_over_on_its_death(rig):
    loop, svc, node = rig(our_valor=20, uwsgi_valor=30, uwsgi_scroll="uwsgi scroll")
    wait_uwsgi_running(loop, node)
    ok = loop.run_until(lambda: node.lord_file.exists() and agreed_with_two(svc)
                        and our_status(svc)["candidate"]["valor"] == 30, 10)
    assert ok, (node.text(), our_status(svc), svc.host.logs)
    st = our_status(svc)
    uwsgi_uuid = st["candidate"]["uuid"]
    assert st["members"][0]["uuid"] == uwsgi_uuid and st["members"][0]["vote_uuid"] == uwsgi_uuid
    assert st["lord_scroll"] == "uwsgi scroll"
    assert node.logged(f"node: {OUR_NAME} valor: 20 uuid: {st['uuid']} joined Legion test")
    # we stepped down (if we were Lord before uWSGI showed up) and are not Lord now
    assert not svc.is_lord("test")
    assert node.logged(f"(valor: 30 uuid: {uwsgi_uuid} checksum: {st['checksum']} votes: 2)")

    t0 = time.monotonic()
    node.stop()                             # SIGINT: uWSGI announces its death at exit
    ok = loop.run_until(lambda: svc.is_lord("test"), 6)
    assert ok, svc.host.logs
    assert svc.host.logged(f"uuid: {uwsgi_uuid} announced its death to Legion test")
    assert not svc.host.logged(f"uuid: {uwsgi_uuid} left Legion test")
    assert time.monotonic() - t0 < 3        # below tolerance: the death was honoured, not waited out


def test_a_uwsgi_lord_hands_over_to_a_better_nsattach_node(rig):
    loop, svc, node = rig(our_valor=20, uwsgi_valor=10, uwsgi_lord_first=True)
    ok = loop.run_until(lambda: svc.is_lord("test") and not node.lord_file.exists(), 10)
    assert ok, (node.text(), our_status(svc), svc.host.logs)
    our_uuid = our_status(svc)["uuid"]
    text = node.text()
    assert f"[uwsgi-legion] a new Lord (valor: 20 uuid: {our_uuid}) raised for Legion test..." in text
    assert f"(phase: unlord legion: test) calling cmd:rm -f {node.lord_file}" in text
