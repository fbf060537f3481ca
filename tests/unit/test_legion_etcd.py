"""The etcd legion's pure election (nsattach.legion.etcd.EtcdElection) against an in-memory etcd
on a fake clock: lease deadline math, hand-over only after the old lease is gone, valor order,
ties, valor 0, lost answers, lord actions; plus the gateway client's HTTP/JSON decoding and the
configuration checks.

The simulation: every node is an EtcdElection; its calls reach a FakeEtcd after a latency, or
not at all while the node is cut off (then they fail at their deadline, as the real client's
do); a node's legion "daemons" start when it reports LordChanged(True) and die some time after
LordChanged(False), never later than the reload-mercy (SIGKILL). Invariants checked on every run:
daemons never run on two nodes at once, and a node's daemons are dead before etcd can drop its
lease.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsattach.config.model import EtcdLegionPlan, LegionActionPlan
from nsattach.errors import ConfigError, Origin
from nsattach.legion.election import Log, LordChanged, RunActions
from nsattach.legion.etcd import (Call, EtcdElection, Member, Phase, Role, Timing, best_member, default_ttl,
                                  min_ttl)
from nsattach.legion.etcd_client import (Reply, b64, decode_reply, parse_endpoint, parse_http_response,
                                         prefix_end, unb64)

T, M = 8, 1
TIMING = Timing(T, M)            # S = 3 s, budget 4 s, keep-alive every 1.33 s, poll every 1 s
LATENCY = 0.01
ORIGIN = Origin("test.ini", 1)


def plan(valor: int, *, actions=(), name: str = "L") -> EtcdLegionPlan:
    return EtcdLegionPlan(name=name, endpoints=("http://127.0.0.1:2379",), valor=valor, origin=ORIGIN, ttl=T,
                          reload_mercy=M, actions=tuple(actions))


# --- an in-memory etcd ----------------------------------------------------------------------

class FakeEtcd:
    def __init__(self):
        self.rev = 1
        self.kv: dict[bytes, dict] = {}
        self.leases: dict[int, list] = {}          # id -> [ttl, expiry]
        self.ids = itertools.count(0x1000)
        self.gone: dict[int, float] = {}           # lease -> when it was dropped (expired or revoked)
        self.lord_created: list[tuple[float, int, bytes]] = []    # (time, revision, value)
        self.lord_deleted: list[float] = []

    def header(self) -> dict:
        return {"revision": str(self.rev)}

    def expire(self, now: float) -> None:
        for lease, (ttl, expiry) in sorted(self.leases.items()):
            if expiry <= now:
                self._revoke(lease, expiry)

    def _revoke(self, lease: int, when: float) -> None:
        del self.leases[lease]
        self.gone[lease] = when
        doomed = [k for k, v in self.kv.items() if v["lease"] == lease]
        if doomed:
            self.rev += 1
            for k in doomed:
                self._delete(k, when)

    def _delete(self, key: bytes, when: float) -> None:
        del self.kv[key]
        if key.endswith(b"/lord"):
            self.lord_deleted.append(when)

    def _put(self, key: bytes, value: bytes, lease: int, when: float) -> None:
        old = self.kv.get(key)
        self.kv[key] = {"value": value, "create": old["create"] if old else self.rev, "mod": self.rev,
                        "version": (old["version"] + 1) if old else 1, "lease": lease}
        if old is None and key.endswith(b"/lord"):
            self.lord_created.append((when, self.rev, value))

    def _range(self, body: dict) -> dict:
        key = unb64(body["key"])
        end = unb64(body.get("range_end")) if body.get("range_end") else None
        keys = sorted(k for k in self.kv if (k == key if end is None else key <= k < end))
        kvs = [{"key": b64(k), "value": b64(self.kv[k]["value"]), "create_revision": str(self.kv[k]["create"]),
                "mod_revision": str(self.kv[k]["mod"]), "version": str(self.kv[k]["version"]),
                **({"lease": str(self.kv[k]["lease"])} if self.kv[k]["lease"] else {})} for k in keys]
        out = {"header": self.header()}
        if kvs:
            out["kvs"], out["count"] = kvs, str(len(kvs))
        return out

    def _compare(self, c: dict) -> bool:
        item = self.kv.get(unb64(c["key"]))
        target = c.get("target", "VERSION")
        if target == "CREATE":
            actual, wanted = (item["create"] if item else 0), int(c.get("create_revision", 0))
        elif target == "VALUE":
            actual, wanted = (item["value"] if item else None), unb64(c.get("value"))
        else:
            raise NotImplementedError(target)
        return actual == wanted

    def handle(self, path: str, body: dict, now: float) -> Reply:
        self.expire(now)
        if path == "/v3/lease/grant":
            lease = next(self.ids)
            self.leases[lease] = [int(body["TTL"]), now + int(body["TTL"])]
            return Reply(data={"header": self.header(), "ID": str(lease), "TTL": str(body["TTL"])})
        if path == "/v3/lease/keepalive":
            lease = int(body["ID"])
            if lease not in self.leases:
                return Reply(data={"header": self.header(), "ID": str(lease)})
            self.leases[lease][1] = now + self.leases[lease][0]
            return Reply(data={"header": self.header(), "ID": str(lease), "TTL": str(self.leases[lease][0])})
        if path == "/v3/lease/revoke":
            lease = int(body["ID"])
            if lease not in self.leases:
                return Reply(error="etcdserver: requested lease not found", code=5)
            self._revoke(lease, now)
            return Reply(data={"header": self.header()})
        if path == "/v3/kv/put":
            lease = int(body.get("lease", 0))
            if lease and lease not in self.leases:
                return Reply(error="etcdserver: requested lease not found", code=5)
            self.rev += 1
            self._put(unb64(body["key"]), unb64(body.get("value")), lease, now)
            return Reply(data={"header": self.header()})
        if path == "/v3/kv/txn":
            ok = all(self._compare(c) for c in body.get("compare", []))
            ops = body.get("success" if ok else "failure", [])
            for op in ops:
                put = op.get("request_put")
                if put and int(put.get("lease", 0)) and int(put["lease"]) not in self.leases:
                    return Reply(error="etcdserver: requested lease not found", code=5)
            writes = any("request_put" in op or "request_delete_range" in op for op in ops)
            if writes:
                self.rev += 1
            responses = []
            for op in ops:
                if "request_range" in op:
                    responses.append({"response_range": self._range(op["request_range"])})
                elif "request_put" in op:
                    put = op["request_put"]
                    self._put(unb64(put["key"]), unb64(put.get("value")), int(put.get("lease", 0)), now)
                    responses.append({"response_put": {"header": self.header()}})
                elif "request_delete_range" in op:
                    key = unb64(op["request_delete_range"]["key"])
                    if key in self.kv:
                        self._delete(key, now)
                    responses.append({"response_delete_range": {"header": self.header()}})
            data = {"header": self.header()}
            if ok:
                data["succeeded"] = True
            if responses:
                data["responses"] = responses
            return Reply(data=data)
        raise NotImplementedError(path)


# --- the simulation ---------------------------------------------------------------------------

class Node:
    def __init__(self, sim: "Sim", index: int, valor: int, member_id: str, actions=()):
        self.sim = sim
        self.index = index
        self.election = EtcdElection(plan(valor, actions=actions), name=f"node{index}", pid=1000 + index,
                                     member_id=member_id, timing=TIMING)
        self.connected = True
        self.lose_replies = False
        self.lose_take_replies = False
        self.latency = LATENCY
        self.daemon_since: float | None = None      # daemons run since
        self.dying_until: float | None = None       # daemons asked to stop, dead at this time
        self.intervals: list[list[float]] = []      # [start, end] of daemon runs
        self.logs: list[str] = []
        self.lord_changes: list[tuple[float, bool]] = []
        self.action_delay = 0.0
        self.scheduled = math.inf

    @property
    def idle(self) -> bool:
        return self.daemon_since is None and self.dying_until is None

    def feed(self, method, *args) -> None:
        self.election.idle = self.idle
        effects = method(*args, self.sim.now, 1_000_000 + self.sim.now)
        self.apply(effects)
        self.reschedule()

    def reschedule(self) -> None:
        deadline = self.election.next_deadline()
        if deadline < self.scheduled or self.scheduled <= self.sim.now:
            self.scheduled = deadline
            if deadline != math.inf:
                self.sim.at(max(deadline, self.sim.now), self.on_timer)

    def on_timer(self) -> None:
        if self.sim.now >= self.election.next_deadline():
            self.scheduled = math.inf
            self.feed(self.election.tick)
        else:
            self.scheduled = math.inf
            self.reschedule()

    def apply(self, effects) -> None:
        for e in effects:
            if isinstance(e, Call):
                self.sim.call(self, e)
            elif isinstance(e, Log):
                self.logs.append(e.text)
            elif isinstance(e, LordChanged):
                self.lord_changes.append((self.sim.now, e.is_lord))
                if e.is_lord:
                    assert self.daemon_since is None and self.dying_until is None, "started while running"
                    self.daemon_since = self.sim.now
                    self.intervals.append([self.sim.now, math.inf])
                elif self.daemon_since is not None:
                    self.daemon_since = None
                    # anywhere up to the mercy, often the worst case (SIGKILL after exactly M)
                    death = self.sim.now + (M if self.sim.rng.random() < 0.5 else self.sim.rng.uniform(0, M))
                    self.dying_until = death
                    self.sim.at(death, self.daemons_dead)
            elif isinstance(e, RunActions):
                if e.event == "lord":
                    self.sim.at(self.sim.now + self.action_delay,
                                lambda tok=e.token: self.feed(self.election.actions_finished, tok, False))

    def daemons_dead(self) -> None:
        self.intervals[-1][1] = self.sim.now
        self.dying_until = None
        self.reschedule()


class Sim:
    def __init__(self, seed: int = 0):
        self.now = 0.0
        self.etcd = FakeEtcd()
        self.nodes: list[Node] = []
        self.queue: list = []
        self.seq = itertools.count()
        self.rng = random.Random(seed)
        self.quorum = True          # False: etcd answers nobody (a cluster without quorum)

    def add(self, valor: int, member_id: str | None = None, actions=()) -> Node:
        node = Node(self, len(self.nodes), valor, member_id or f"id-{len(self.nodes)}", actions)
        self.nodes.append(node)
        return node

    def start(self, node: Node) -> None:
        node.feed(node.election.start)

    def at(self, when: float, fn) -> None:
        heapq.heappush(self.queue, (when, next(self.seq), fn))

    def call(self, node: Node, call: Call) -> None:
        sent = self.now
        timeout = sent + TIMING.request_timeout

        def fail():
            node.feed(node.election.reply, call.token, Reply(error="timed out", transport=True))

        if not node.connected or not self.quorum:
            self.at(timeout, fail)
            return

        latency = node.latency

        def arrive():
            if not self.quorum:
                self.at(max(timeout, self.now), fail)
                return
            reply = self.etcd.handle(call.path, call.body, self.now)
            lost = node.lose_replies or (node.lose_take_replies and "CREATE" in json.dumps(call.body))
            if node.connected and not lost and self.now + latency < timeout:
                self.at(self.now + latency, lambda: node.feed(node.election.reply, call.token, reply))
            else:       # no answer in time: the client gives up at the deadline (it went through, though)
                self.at(max(timeout, self.now), fail)

        self.at(sent + latency, arrive)

    def run_until(self, end: float) -> None:
        while self.queue and self.queue[0][0] <= end:
            when, _, fn = heapq.heappop(self.queue)
            self.now = max(self.now, when)
            self.etcd.expire(self.now)
            fn()
        self.now = end
        self.etcd.expire(self.now)

    def lords(self) -> list[int]:
        return [n.index for n in self.nodes if n.election.is_lord]

    def running(self) -> list[int]:
        return [n.index for n in self.nodes if not n.idle]

    def check_invariants(self) -> None:
        spans = sorted((s, e, n.index) for n in self.nodes for s, e in n.intervals)
        for (s1, e1, a), (s2, e2, b) in zip(spans, spans[1:]):
            assert s2 >= e1, f"daemons of node {a} [{s1}, {e1}] and node {b} [{s2}, {e2}] overlap"
        # a node's daemons are dead before etcd drops the lease it held the lord key with
        for when, revision, value in self.etcd.lord_created:
            holder = next(n for n in self.nodes if n.election.id == json.loads(value)["id"])
            for start, end in holder.intervals:
                if start >= when:
                    later = [d for d in self.etcd.lord_deleted if d >= when]
                    if later and start < later[0]:
                        assert end <= later[0], f"node {holder.index}'s daemons outlived its lord key"


# --- timing -----------------------------------------------------------------------------------

def test_lease_deadline_math():
    t = Timing(15, 3)
    assert t.safety == 1 + t.request_timeout == 3
    assert t.budget == 15 - 3 - 3
    assert t.keepalive == pytest.approx(3)
    # not renewed since r: begin stopping by r + T - M - S; SIGKILLed by r + T - S < r + T
    assert t.stop_by(100.0) == 109.0
    assert t.stop_by(100.0) + t.mercy + t.safety == 100.0 + t.ttl
    # etcd granted less than asked: the shorter TTL counts
    assert t.stop_by(100.0, ttl=12) == 106.0
    assert min_ttl(3) == 11 and default_ttl(3) == 15 and default_ttl(10) == 25


def test_best_member_valor_ties_and_arbiters():
    ms = [Member("a", "n", 1, 10, None, 1), Member("c", "n", 1, 30, None, 1), Member("b", "n", 1, 30, None, 1),
          Member("z", "n", 1, 0, None, 1)]
    assert best_member(ms).id == "c"                    # highest valor, ties by the higher id
    assert best_member([Member("z", "n", 1, 0, None, 1)]) is None     # valor 0 never leads


# --- election ---------------------------------------------------------------------------------

def test_a_lonely_node_becomes_lord_with_the_lord_key_revision_as_term():
    sim = Sim()
    a = sim.add(10)
    sim.start(a)
    sim.run_until(3)
    assert sim.lords() == [0]
    created = sim.etcd.lord_created
    assert len(created) == 1 and a.election.term == created[0][1] > 0
    # it polls once before taking, so it never takes before seeing who else is there
    assert a.lord_changes[0][0] >= TIMING.poll
    sim.run_until(60)
    assert sim.lords() == [0] and len(a.lord_changes) == 1     # keep-alives hold it
    sim.check_invariants()


def test_highest_valor_leads_ties_by_id_and_valor_zero_never():
    sim = Sim()
    nodes = [sim.add(10, "a"), sim.add(30, "b"), sim.add(30, "c"), sim.add(0, "d")]
    for n in nodes:
        sim.start(n)
    sim.run_until(10)
    assert sim.lords() == [2]
    sim.check_invariants()

    alone = Sim()
    arbiter = alone.add(0, "z")
    alone.start(arbiter)
    alone.run_until(30)
    assert alone.lords() == [] and not alone.etcd.lord_created


def test_cut_off_lord_stops_before_its_lease_can_expire_and_nobody_starts_before_expiry():
    sim = Sim(seed=1)
    a, b = sim.add(20), sim.add(10)
    sim.start(a)
    sim.start(b)
    sim.run_until(10)
    assert sim.lords() == [0]
    lease = a.election.lease
    renewed = a.election.renewed_at
    a.connected = False
    cut = sim.now
    sim.run_until(cut + 30)
    # A stepped down at its deadline, its daemons were dead S seconds before etcd dropped its lease
    down = next(t for t, lord in a.lord_changes if not lord)
    assert down <= TIMING.stop_by(renewed) + 1e-9
    assert a.intervals[0][1] <= renewed + T - TIMING.safety + 1e-9
    expired = sim.etcd.gone[lease]
    assert expired >= renewed + T
    assert a.intervals[0][1] < expired - 1
    # B took over only after A's lease was gone
    assert sim.lords() == [1]
    assert b.intervals[0][0] >= expired
    assert "stepping down now, before the lease can expire" in "\n".join(a.logs)
    sim.check_invariants()

    # A comes back: valor 20 beats 10; B stops first, then releases, then A starts
    a.connected = True
    sim.run_until(sim.now + 20)
    assert sim.lords() == [0]
    assert a.intervals[1][0] >= b.intervals[0][1]
    assert a.election.term > b.election.term > sim.etcd.lord_created[0][1]    # the term only grows
    sim.check_invariants()


def test_better_member_hand_over_waits_for_the_old_daemons():
    sim = Sim(seed=2)
    a = sim.add(10)
    sim.start(a)
    sim.run_until(5)
    assert sim.lords() == [0]
    b = sim.add(50)
    sim.start(b)
    sim.run_until(15)
    assert sim.lords() == [1]
    # A's daemons died (up to the mercy after the stop) before B's started
    assert a.intervals[0][1] <= b.intervals[0][0]
    assert any("a new Lord" in line for line in a.logs)
    assert any("lord key released" in line for line in a.logs)
    sim.check_invariants()


def test_lost_answer_of_the_take_is_adopted_by_the_next_poll():
    sim = Sim()
    a = sim.add(10)
    sim.start(a)
    sim.run_until(0.9)          # registered and polled, not yet taken
    assert a.election.role is Role.FOLLOWER and a.election.registered
    a.lose_take_replies = True
    sim.run_until(1.5)          # the take went through, its answer is lost
    a.lose_take_replies = False
    assert sim.etcd.lord_created and not a.election.is_lord
    sim.run_until(8)
    assert sim.lords() == [0] and len(sim.etcd.lord_created) == 1
    assert a.election.term == sim.etcd.lord_created[0][1]
    assert [lord for _, lord in a.lord_changes] == [True]
    sim.check_invariants()


def test_lord_actions_finish_before_the_daemons_start():
    sim = Sim()
    a = sim.add(10, actions=[LegionActionPlan("lord", "cmd", "true", ORIGIN)])
    a.action_delay = 1.5
    sim.start(a)
    sim.run_until(1.9)
    assert a.election.role is Role.ACTIONS and not a.intervals
    sim.run_until(2.7)
    assert a.election.is_lord and a.intervals
    assert a.intervals[0][0] >= sim.etcd.lord_created[0][0] + 1.5


def test_deadline_passing_during_lord_actions_means_no_lordship():
    sim = Sim()
    a = sim.add(10, actions=[LegionActionPlan("lord", "cmd", "sleep", ORIGIN)])
    a.action_delay = 20
    sim.start(a)
    sim.run_until(2.2)
    assert a.election.role is Role.ACTIONS
    a.connected = False
    sim.run_until(30)
    assert not a.intervals and not a.election.is_lord


def test_etcd_saying_the_lease_is_gone_demotes_at_once():
    sim = Sim()
    a = sim.add(10)
    sim.start(a)
    sim.run_until(5)
    assert a.election.is_lord
    lease = a.election.lease
    sim.etcd._revoke(lease, sim.now)        # an operator revoked it
    t = sim.now
    sim.run_until(t + 10)
    # the next poll (no lord key) or keep-alive (no lease) tells it: it steps down at once
    assert [lord for _, lord in a.lord_changes] == [True, False, True]
    assert a.lord_changes[1][0] <= t + TIMING.poll + 0.1
    assert a.lord_changes[2][0] >= a.intervals[0][1]         # its old daemons were gone first
    assert a.election.is_lord and a.election.lease != lease       # a new session


def test_no_quorum_means_no_lord_anywhere():
    sim = Sim(seed=3)
    nodes = [sim.add(v) for v in (10, 20, 30)]
    for n in nodes:
        sim.start(n)
    sim.run_until(10)
    assert sim.lords() == [2]
    sim.quorum = False
    sim.run_until(10 + T)
    assert sim.lords() == [] and sim.running() == []
    sim.run_until(60)
    assert sim.lords() == [] and sim.running() == []
    sim.quorum = True
    sim.run_until(80)
    assert len(sim.lords()) == 1
    sim.check_invariants()


def test_leaving_keeps_the_lease_until_the_daemons_are_gone_then_revokes_it():
    sim = Sim(seed=4)
    a, b = sim.add(20), sim.add(10)
    sim.start(a)
    sim.start(b)
    sim.run_until(6)
    assert sim.lords() == [0]
    lease = a.election.lease
    a.election.idle = a.idle
    a.apply(a.election.leave(sim.now, 0.0, death_actions=True))
    a.reschedule()
    assert not a.election.is_lord and a.election.phase is Phase.LEAVING
    assert lease in sim.etcd.leases            # still held: the daemons are dying
    sim.run_until(sim.now + 5)
    assert a.election.phase is Phase.STOPPED and lease in sim.etcd.gone
    assert sim.etcd.gone[lease] >= a.intervals[0][1]
    assert sim.lords() == [1] and b.intervals[0][0] >= a.intervals[0][1]
    sim.check_invariants()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000),
       valors=st.lists(st.integers(0, 3), min_size=2, max_size=4),
       events=st.lists(st.tuples(st.floats(0.1, 12), st.integers(0, 3), st.sampled_from(["cut", "heal", "lossy", "quorum", "slow"])),
                       max_size=12))
def test_never_two_daemons_at_once_whatever_the_network_does(seed, valors, events):
    sim = Sim(seed)
    nodes = [sim.add(v, f"id-{i}") for i, v in enumerate(valors)]
    for n in nodes:
        sim.start(n)
    t = 0.0
    for delay, who, what in events:
        t += delay
        sim.run_until(t)
        node = nodes[who % len(nodes)]
        if what == "cut":
            node.connected = False
        elif what == "heal":
            node.connected, node.lose_replies = True, False
        elif what == "lossy":
            node.lose_replies = not node.lose_replies
        elif what == "slow":        # answers late (0.9 s each way) or too late (1.5 s: past the deadline)
            node.latency = {LATENCY: 0.9, 0.9: 1.5, 1.5: LATENCY}[node.latency]
        else:
            sim.quorum = not sim.quorum
        sim.check_invariants()
    for n in nodes:
        n.connected, n.lose_replies, n.latency = True, False, LATENCY
    sim.quorum = True
    sim.run_until(t + 3 * T + 10)
    sim.check_invariants()
    # healed: exactly the best live member leads (if any can)
    if any(v > 0 for v in valors):
        best = max(range(len(valors)), key=lambda i: (valors[i], f"id-{i}"))
        assert sim.lords() == [best]
    else:
        assert sim.lords() == []


# --- the gateway client's decoding -------------------------------------------------------------

def test_http_response_parsing():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    assert parse_http_response(head + b"Content-Length: 2\r\n\r\n{}", complete=False) == (200, b"{}")
    assert parse_http_response(head + b"Content-Length: 5\r\n\r\n{}", complete=False) is None
    with pytest.raises(ValueError):
        parse_http_response(head + b"Content-Length: 5\r\n\r\n{}", complete=True)
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nGrpc-Trailer: x\r\n\r\n"
    assert parse_http_response(chunked, complete=False) == (200, b'{"a":1}')
    assert parse_http_response(chunked[:-20], complete=False) is None
    assert parse_http_response(b"HTTP/1.1 200 OK\r\n\r\nbody", complete=True) == (200, b"body")
    with pytest.raises(ValueError):
        parse_http_response(b"SSH-2.0-OpenSSH\r\n\r\n", complete=True)


def test_gateway_replies():
    ok = decode_reply(200, b'{"header":{"revision":"3"},"kvs":[{"key":"Zm9v"}]}', "e")
    assert ok.ok and ok.data["header"]["revision"] == "3"
    stream = decode_reply(200, b'{"result":{"header":{},"ID":"7","TTL":"5"}}\n', "e")
    assert stream.ok and stream.data["TTL"] == "5"
    err = decode_reply(200, b'{"error":"etcdserver: requested lease not found","message":"etcdserver: requested '
                            b'lease not found","code":5}', "e")
    assert not err.ok and err.code == 5 and not err.transport
    unavailable = decode_reply(503, b'{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}', "e")
    assert unavailable.transport and unavailable.code == 14
    assert decode_reply(404, b"Not Found\n", "e").transport
    in_stream = decode_reply(200, b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader",'
                                  b'"http_status":"Service Unavailable"}}\n', "e")
    assert not in_stream.ok and in_stream.code == 14 and in_stream.transport


def test_endpoints_and_keys():
    ep = parse_endpoint("https://[::1]:2379/")
    assert (ep.scheme, ep.host, ep.port, ep.tls, ep.authority) == ("https", "::1", 2379, True, "[::1]:2379")
    assert parse_endpoint("http://etcd-0.example").port == 2379
    for bad in ("ftp://x", "http://", "http://a:b", "http://u:p@x:1", "http://x:1/v3", "http://bad_name"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    assert prefix_end(b"/a/") == b"/a0" and prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff") == b"\0"
    assert unb64(b64("é")) == "é".encode()


# --- configuration ------------------------------------------------------------------------------

def build(*lines: str):
    from nsattach.config.plan import build_plan
    from nsattach.config.raw import Entry, RawConfig

    entries = []
    for n, line in enumerate(lines, 1):
        key, _, value = line.partition("=")
        entries.append(Entry(key.strip(), value.strip(), Origin("ns.ini", n)))
    return build_plan(RawConfig(entries=entries, files=["/etc/ns.ini"], placeholders=set()), cwd="/tmp")


def errors(*lines: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build(*lines)
    return [str(p) for p in info.value.problems]


def test_etcd_legion_options():
    p = build("legion-etcd = mylegion http://10.0.0.1:2379,http://10.0.0.2:2379 90",
              "legion-etcd-prefix = mylegion /apps",
              "legion-etcd-user = mylegion app:s3:cret",
              "legion-scroll = mylegion hello",
              "legion-lord = mylegion cmd:echo lord",
              "legion = udp 127.0.0.1:7000 1 aes-128-cbc:x",
              "legion-smart-attach-daemon = mylegion /tmp/beat.pid celery beat --pidfile=/tmp/beat.pid",
              "legion-attach-daemon = udp sleep 1")
    (lg,) = p.etcd_legions
    assert lg.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379") and lg.valor == 90
    assert lg.prefix == "/apps/" and (lg.user, lg.password) == ("app", "s3:cret")
    assert lg.ttl == default_ttl(3) == 15 and lg.reload_mercy == 3
    assert lg.scroll == "hello" and [a.event for a in lg.actions] == ["lord"]
    assert [x.name for x in p.legions] == ["udp"]         # both kinds in one config
    assert {d.legion for d in p.daemons} == {"mylegion", "udp"}


def test_etcd_legion_option_errors():
    (e,) = errors("reload-mercy = 5", "legion-etcd = L http://127.0.0.1:2379 1", "legion-etcd-ttl = L 12")
    assert "legion-etcd-ttl" in e and "too short for reload-mercy 5 s" in e and "legion-etcd-ttl = L 15" in e
    assert build("reload-mercy = 10", "legion-etcd = L http://127.0.0.1:2379 1").etcd_legions[0].ttl == 25
    assert "must start with http:// or https://" in errors("legion-etcd = L ftp://x 1")[0]
    assert "invalid legion-etcd syntax" in errors("legion-etcd = L http://x")[0]
    assert "all be http:// or all https://" in errors("legion-etcd = L http://a,https://b 1")[0]
    assert "need https://" in errors("legion-etcd = L http://a 1", "legion-etcd-cacert = L /etc/ca.pem")[0]
    assert "needs legion-etcd-cert" in errors("legion-etcd = L https://a 1", "legion-etcd-key = L /k.pem")[0]
    assert "only applies to legion/legion-mcast" in errors("legion-etcd = L http://a 1", "legion-quorum = L 2")[0]
    assert "only applies to legion-etcd" in errors("legion = U 127.0.0.1:7000 1 aes-128-cbc:x",
                                                   "legion-etcd-ttl = U 30")[0]
    assert "already defined" in errors("legion = U 127.0.0.1:7000 1 aes-128-cbc:x", "legion-etcd = U http://a 1")[0]
    assert "USER:PASSWORD" in errors("legion-etcd = L http://a 1", "legion-etcd-user = L nopassword")[0]
    assert "must start with /" in errors("legion-etcd = L http://a 1", "legion-etcd-prefix = L apps")[0]


def test_check_output_hides_the_etcd_password():
    from nsattach.config.render import plan_to_json, plan_to_text

    p = build("legion-etcd = L https://127.0.0.1:2379 5", "legion-etcd-user = L root:topsecret")
    assert "topsecret" not in plan_to_json(p) and "topsecret" not in plan_to_text(p)
    assert "etcd https://127.0.0.1:2379, valor 5" in plan_to_text(p)
