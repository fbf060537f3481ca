"""The pure Legion election (uwsgi-spec §7.5 steps 6-10, §7.6, §7.7 and the Q-L fixes),
driven by scripted packet histories and fake clocks, plus a small simulated cluster of
Election instances exchanging their announcements."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest

import nsattach.legion.election as election_module
from nsattach.config.model import LegionActionPlan, LegionPlan, LegionSettings
from nsattach.errors import Origin
from nsattach.legion.election import (FIRST_ELECTION_FREQS, Election, Log, LordChanged, RunActions, Send,
                                        checksum_of)
from nsattach.legion.wire import NO_UUID, Announcement

O = Origin("test.ini", 1)
WALL0 = 1_800_000_000.0
T0 = 1000.0
UUID_A = "aaaaaaaa-0000-4000-8000-000000000001"
UUID_B = "bbbbbbbb-0000-4000-8000-000000000002"
UUID_C = "cccccccc-0000-4000-8000-000000000003"
UUID_ME = "5eeeeeee-0000-4000-8000-000000000000"
SETTINGS = LegionSettings(freq=1, tolerance=3, skew_tolerance=60)
E1 = T0 + FIRST_ELECTION_FREQS * SETTINGS.freq     # the first election step


def act(event: str, arg: str = "true", action: str = "cmd") -> LegionActionPlan:
    return LegionActionPlan(event, action, arg, O)


def plan(valor: int = 10, *, quorum: int = 0, actions=(), scroll: str | None = None, name: str = "test") -> LegionPlan:
    return LegionPlan(name=name, address="127.0.0.1:1", valor=valor, cipher="aes-128-cbc", secret="s", iv=None,
                      multicast=False, origin=O, quorum=quorum, scroll=scroll, actions=tuple(actions))


def node(valor=10, uuid=UUID_ME, *, settings=SETTINGS, name="me", pid=100, **kw) -> Election:
    return Election(plan(valor, **kw), settings, name=name, pid=pid, uuid=uuid)


def wall(t: float) -> float:
    return WALL0 + (t - T0)


def ann(valor=20, uuid=UUID_A, *, name="peer", pid=7, t=T0, checksum=0, lord_valor=0, lord_uuid=NO_UUID,
        legion="test", dead=False, scroll=None) -> Announcement:
    return Announcement(legion=legion, valor=valor, unix=int(wall(t)), lord=0, name=name, pid=pid,
                        uuid=uuid.encode() if isinstance(uuid, str) else uuid, checksum=checksum,
                        lord_valor=lord_valor, lord_uuid=lord_uuid.encode() if isinstance(lord_uuid, str) else lord_uuid,
                        scroll=scroll, dead=dead)


def logs(effects) -> list[str]:
    return [e.text for e in effects if isinstance(e, Log)]


def sends(effects) -> list[Announcement]:
    return [e.announcement for e in effects if isinstance(e, Send)]


def runs(effects, event=None) -> list[RunActions]:
    return [e for e in effects if isinstance(e, RunActions) and (event is None or e.event == event)]


def lord_changes(effects) -> list[bool]:
    return [e.is_lord for e in effects if isinstance(e, LordChanged)]


def agreeing(e: Election, peer_valor: int, peer_uuid: str, *, t: float, name="peer", **kw) -> Announcement:
    """What a peer that sees exactly {e, itself} announces once it has evaluated."""
    cs = checksum_of([(e.valor, e.uuid), (peer_valor, peer_uuid.encode())])
    cands = [(e.valor, e.uuid)] + ([(peer_valor, peer_uuid.encode())] if peer_valor > 0 else [])
    best = max(cands)
    return ann(peer_valor, peer_uuid, name=name, t=t, checksum=cs, lord_valor=best[0], lord_uuid=best[1], **kw)


class Driver:
    """One Election under a fake clock: runs ticks at their deadlines, records effects."""

    def __init__(self, e: Election, t: float = T0):
        self.e = e
        self.t = t
        self.effects: list = []
        self.effects += e.start(t, wall(t))

    def advance(self, until: float) -> list:
        got = []
        while True:
            deadline = self.e.next_deadline()
            if deadline > until:
                break
            self.t = max(self.t, deadline)
            got += self.e.tick(self.t, wall(self.t))
        self.t = until
        self.effects += got
        return got

    def packet(self, a: Announcement) -> list:
        got = self.e.packet(a, self.t, wall(self.t))
        self.effects += got
        return got

    def finish(self, token: int, failed: bool = False) -> list:
        got = self.e.actions_finished(token, failed, self.t, wall(self.t))
        self.effects += got
        return got


# --- purity ----------------------------------------------------------------------------------

def test_election_module_is_pure():
    tree = ast.parse(Path(election_module.__file__).read_text())
    imported = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            imported |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            imported.add((n.module or "").split(".")[0])
    assert not imported & {"os", "socket", "time", "signal", "subprocess", "ctypes", "select", "selectors", "threading"}


# --- start, first election, lonely node -------------------------------------------------------

def test_lonely_node_announces_at_start_and_becomes_lord_after_freq():
    d = Driver(node(10))
    first = sends(d.effects)
    assert len(first) == 1
    a = first[0]
    assert (a.valor, a.checksum, a.lord_valor, a.lord_uuid, a.lord, a.dead) == (10, 0, 0, NO_UUID, 0, False)
    assert not d.e.is_lord
    d.advance(E1 - 0.01)
    assert not d.e.is_lord                      # no election before freq
    got = d.advance(E1)
    assert d.e.is_lord
    assert lord_changes(got) == [True]
    texts = logs(got)
    assert texts[0].startswith("[uwsgi-legion] --- WE HAVE QUORUM FOR LEGION test !!! (valor: 10 uuid: " + UUID_ME)
    assert "votes: 1) ---" in texts[0]
    assert "[uwsgi-legion] attempting to become the Lord of the Legion test" in texts
    assert "[uwsgi-legion] i am now the Lord of the Legion test" in texts
    lord_ann = sends(got)
    assert len(lord_ann) == 1                   # the immediate Lord announcement replaces the scheduled one
    assert lord_ann[0].lord == int(wall(E1))
    assert lord_ann[0].lord_valor == 10 and lord_ann[0].lord_uuid == UUID_ME.encode()
    assert lord_ann[0].checksum == 10 + sum(UUID_ME.encode())


def test_checksum_matches_the_captured_uwsgi_value():
    # uwsgi-spec §7.4: after becoming Lord the captured node announced checksum=2389
    assert checksum_of([(10, b"825652c5-2cc8-4d19-92f5-f488b2a4d1ab")]) == 2389


def test_checksum_wraps_unsigned_64_and_uses_signed_chars():
    assert checksum_of([((1 << 64) - 1, b"\x01" + b"\0" * 35)]) == 0
    assert checksum_of([(0, b"\xff" + b"\0" * 35)]) == (1 << 64) - 1      # (char)0xff == -1 on x86
    assert checksum_of([(5, NO_UUID), (0, b"\x02" * 36)]) == 5 + 72        # arbiters count too


def test_arbiter_alone_never_becomes_lord():
    d = Driver(node(0))
    d.advance(T0 + 10)
    assert not d.e.is_lord
    assert not runs(d.effects, "lord")
    assert "arbiter" in logs(d.effects)[1]


def test_start_twice_is_refused():
    e = node()
    e.start(T0, wall(T0))
    with pytest.raises(RuntimeError):
        e.start(T0, wall(T0))


def test_big_valor_warns_about_uwsgi_16_bit_truncation():
    assert any(level == "warning" and "16 bits" in text
               for text, level in ((l.text, l.level) for l in Driver(node(70000)).effects if isinstance(l, Log)))


# --- receive pipeline steps 6-10 ---------------------------------------------------------------

def test_peer_joins_and_runs_node_joined_actions():
    d = Driver(node(10, actions=[act("node-joined", "echo joined")]))
    got = d.packet(ann(20, UUID_A))
    assert f"[uwsgi-legion] node: peer valor: 20 uuid: {UUID_A} joined Legion test" in logs(got)
    assert [r.actions[0].argument for r in runs(got, "node-joined")] == ["echo joined"]
    assert list(d.e.members) == [(20, "peer", UUID_A.encode())]


def test_arbiter_join_is_logged_as_arbiter():
    d = Driver(node(10))
    assert f"[uwsgi-legion] arbiter: arb valor: 0 uuid: {UUID_A} joined Legion test" in logs(d.packet(ann(0, UUID_A, name="arb")))


def test_wrong_legion_name_is_rejected():
    d = Driver(node())
    got = d.packet(ann(legion="other"))
    assert any(t.startswith("[uwsgi-legion] invalid legion name") for t in logs(got))
    assert not d.e.members


def test_own_looped_packet_is_ignored_silently():
    e = node(10, name="me", pid=100)
    d = Driver(e)
    own = sends(d.effects)[0]
    assert d.packet(own) == []
    assert not e.members
    # same name/uuid but another pid is another process, hence a member
    d.packet(dataclasses.replace(own, pid=101))
    assert len(e.members) == 1


def test_clock_skew_rejects_old_packets_and_accepts_future_ones():
    d = Driver(node())
    d.advance(T0 + 100)
    got = d.packet(ann(t=T0 + 100 - 61))
    assert "[uwsgi-legion] untolerable packet received for Legion test , check your clock !!!" in logs(got)
    assert not d.e.members
    d.packet(ann(t=T0 + 100 - 59))
    assert len(d.e.members) == 1
    d.packet(ann(20, UUID_B, t=T0 + 10_000))        # from the future: accepted
    assert len(d.e.members) == 2


def test_empty_name_is_rejected_even_without_the_decoder():
    d = Driver(node())
    got = d.packet(ann(name=""))
    assert "[uwsgi-legion] invalid packet (empty node name)" in logs(got)
    assert not d.e.members


def test_identity_is_valor_name_uuid_not_pid():
    d = Driver(node())
    d.packet(ann(20, UUID_A, pid=1))
    d.packet(ann(20, UUID_A, pid=2))
    assert len(d.e.members) == 1 and d.e.members[(20, "peer", UUID_A.encode())].pid == 2
    d.packet(ann(21, UUID_A))
    d.packet(ann(20, UUID_A, name="other"))
    d.packet(ann(20, UUID_B))
    assert len(d.e.members) == 4


def test_unknown_dead_node_is_ignored():
    d = Driver(node(actions=[act("node-joined"), act("node-left")]))
    assert d.packet(ann(dead=True)) == []
    assert not d.e.members


def test_announced_death_removes_the_node_and_runs_node_left_actions():
    d = Driver(node(actions=[act("node-left", "echo left")]))
    d.packet(ann(20, UUID_A))
    got = d.packet(ann(20, UUID_A, dead=True))
    assert f"[uwsgi-legion] node: peer valor: 20 uuid: {UUID_A} announced its death to Legion test" in logs(got)
    assert [r.actions[0].argument for r in runs(got, "node-left")] == ["echo left"]     # Q-L6
    assert not d.e.members


def test_expiry_after_tolerance_runs_node_left_actions():
    d = Driver(node(actions=[act("node-left", "echo left")]))
    d.advance(T0 + 0.5)
    d.packet(ann(20, UUID_A, t=d.t))
    assert d.e.next_deadline() <= T0 + 0.5 + 3
    got = d.advance(T0 + 3.49)
    assert d.e.members and not runs(got, "node-left")
    got = d.advance(T0 + 3.5)
    assert not d.e.members
    assert f"[uwsgi-legion] node: peer valor: 20 uuid: {UUID_A} left Legion test" in logs(got)
    assert len(runs(got, "node-left")) == 1


def test_scroll_is_updated_on_every_packet():
    d = Driver(node(5))
    d.packet(ann(20, UUID_A, scroll=b"first"))
    d.packet(ann(20, UUID_A, scroll=b"second"))
    assert d.e.members[(20, "peer", UUID_A.encode())].scroll == b"second"        # Q-L7
    d.advance(E1)
    assert d.e.lord_scroll == b"second"          # the candidate's scroll
    d.packet(ann(20, UUID_A, scroll=None))
    assert d.e.members[(20, "peer", UUID_A.encode())].scroll is None


# --- election rules ------------------------------------------------------------------------

def test_higher_valor_peer_is_the_candidate_and_we_do_not_become_lord():
    d = Driver(node(10))
    d.advance(E1 - 0.5)
    d.packet(agreeing(d.e, 20, UUID_A, t=d.t))
    d.advance(E1)
    assert not d.e.is_lord
    assert (d.e.lord_valor, d.e.lord_uuid) == (20, UUID_A.encode())
    assert d.e.votes == 2 and d.e.agreed
    assert sends(d.effects)[-1].lord_valor == 20


def test_lower_valor_peer_agreeing_makes_us_lord_with_two_votes():
    d = Driver(node(30))
    d.advance(E1 - 0.5)
    d.packet(agreeing(d.e, 20, UUID_A, t=d.t))
    got = d.advance(E1)
    assert d.e.is_lord and d.e.votes == 2
    report = [t for t in logs(got) if t.startswith("[uwsgi-legion")]
    assert report[0].endswith("votes: 2) ---")
    assert report[1].startswith(f"[uwsgi-legion-node] node: peer valor: 20 uuid: {UUID_A} last_seen: ")
    assert report[1].endswith(f"vote_valor: 30 vote_uuid: {UUID_ME}")
    assert report[2] == "[uwsgi-legion] --- END OF QUORUM REPORT ---"


@pytest.mark.parametrize("mine, theirs, i_win", [
    ("aaaaaaaa-0000-4000-8000-000000000000", "bbbbbbbb-0000-4000-8000-000000000000", False),
    ("bbbbbbbb-0000-4000-8000-000000000000", "aaaaaaaa-0000-4000-8000-000000000000", True),
    ("aaaaaaaa-0000-4000-8000-000000000002", "aaaaaaaa-0000-4000-8000-000000000001", True),
])
def test_equal_valor_tie_break_on_uuid_bytes(mine, theirs, i_win):
    d = Driver(node(10, mine))
    d.advance(E1 - 0.5)
    d.packet(agreeing(d.e, 10, theirs, t=d.t))
    d.advance(E1)
    assert d.e.is_lord is i_win
    assert d.e.lord_uuid == (mine if i_win else theirs).encode()


def test_arbiters_vote_but_are_never_candidates():
    d = Driver(node(10))
    d.advance(E1 - 0.5)
    a = agreeing(d.e, 0, UUID_C, t=d.t, name="arb")
    assert a.lord_valor == 10
    d.packet(a)
    d.advance(E1)
    assert d.e.is_lord and d.e.votes == 2
    assert d.e.checksum == checksum_of([(10, UUID_ME.encode()), (0, UUID_C.encode())])


def test_any_disagreeing_member_freezes_decisions():
    d = Driver(node(10))
    d.advance(E1 - 0.5)
    # agrees on the candidate but has not seen us yet: its checksum differs
    d.packet(ann(5, UUID_A, t=d.t, checksum=5 + sum(UUID_A.encode()), lord_valor=10, lord_uuid=UUID_ME))
    d.advance(E1 + 1.4)
    assert not d.e.is_lord and d.e.votes == 0
    d.packet(agreeing(d.e, 5, UUID_A, t=d.t))
    d.advance(E1 + 2)
    assert d.e.is_lord


def test_disagreement_does_not_unlord_a_lord():
    d = Driver(node(10))
    d.advance(E1)
    assert d.e.is_lord
    d.packet(ann(5, UUID_A, t=d.t, checksum=1, lord_valor=5, lord_uuid=UUID_A))
    d.advance(E1 + 1.5)
    assert d.e.is_lord and d.e.votes == 0


def test_new_lord_raised_unlords_with_actions_and_scroll_log():
    d = Driver(node(10, actions=[act("unlord", "echo unlord")]))
    d.advance(E1)
    assert d.e.is_lord
    d.packet(ann(20, UUID_A, t=d.t, scroll=b"the new scroll"))          # joins, not yet agreeing
    assert d.e.is_lord
    got = d.packet(agreeing(d.e, 20, UUID_A, t=d.t, scroll=b"the new scroll"))
    assert not d.e.is_lord
    assert lord_changes(got) == [False]
    texts = logs(got)
    assert f"[uwsgi-legion] a new Lord (valor: 20 uuid: {UUID_A}) raised for Legion test..." in texts
    i = texts.index("*********** The New Lord Scroll ***********")
    assert texts[i + 1:i + 3] == ["the new scroll", "*********** End of the New Lord Scroll ***********"]
    assert [r.actions[0].argument for r in runs(got, "unlord")] == ["echo unlord"]


def test_join_actions_run_once_at_first_agreement():
    d = Driver(node(10, actions=[act("join", "echo join")]))
    d.advance(T0 + 5)
    d.packet(agreeing(d.e, 20, UUID_A, t=d.t))
    d.advance(T0 + 8)
    assert len(runs(d.effects, "join")) == 1


def test_quorum_report_only_when_something_changed():
    d = Driver(node(10))
    d.advance(T0 + 5)
    reports = [t for t in logs(d.effects) if "WE HAVE QUORUM" in t]
    assert len(reports) == 1
    d.packet(agreeing(d.e, 5, UUID_A, t=d.t))
    reports = [t for t in logs(d.effects) if "WE HAVE QUORUM" in t]
    assert len(reports) == 2 and "votes: 2" in reports[-1]


# --- quorum ---------------------------------------------------------------------------------

def test_no_quorum_logs_throttled_and_blocks_lordship():
    d = Driver(node(10, quorum=2))
    d.advance(T0 + 30)
    warnings = [t for t in logs(d.effects) if t.startswith("[uwsgi-legion] no quorum")]
    assert warnings == ["[uwsgi-legion] no quorum: only 1 vote(s) for Legion test, 2 needed to elect a Lord"]
    assert not d.e.is_lord
    d.advance(E1 + 60)
    assert len([t for t in logs(d.effects) if t.startswith("[uwsgi-legion] no quorum")]) == 2


def test_quorum_reached_with_a_peer():
    d = Driver(node(10, quorum=2))
    d.advance(E1 + 0.5)
    d.packet(agreeing(d.e, 5, UUID_A, t=d.t))
    assert d.e.is_lord and d.e.votes == 2


def test_losing_quorum_unlords_at_once_even_when_the_log_is_throttled():
    d = Driver(node(10, quorum=2, actions=[act("unlord", "echo unlord")]))
    d.advance(E1 + 0.5)               # logged "no quorum" at E1: throttled for 60 s
    d.packet(agreeing(d.e, 5, UUID_A, t=d.t))
    assert d.e.is_lord
    got = d.advance(E1 + 0.5 + 3)       # the peer expires
    assert not d.e.is_lord                              # Q-L4: not 60 s later
    assert lord_changes(got) == [False]
    assert "[uwsgi-legion] i cannot be The Lord of The Legion test without a quorum ..." in logs(got)
    assert len(runs(got, "unlord")) == 1
    assert not any(t.startswith("[uwsgi-legion] no quorum") for t in logs(got))    # the log stays throttled


# --- lord actions, suspension -----------------------------------------------------------------

def test_lord_waits_for_lord_actions_and_announcements_go_on():
    d = Driver(node(10, actions=[act("lord", "sleep 5"), act("lord", "echo second")]))
    got = d.advance(E1)
    (run,) = runs(got, "lord")
    assert [a.argument for a in run.actions] == ["sleep 5", "echo second"]
    assert run.stop_on_error is False
    assert not d.e.is_lord and "[uwsgi-legion] attempting to become the Lord of the Legion test" in logs(got)
    got = d.advance(E1 + 3)
    assert len(sends(got)) == 3 and not runs(got, "lord")      # announcing on schedule, no second attempt
    assert d.e.status()["becoming_lord"] is True
    got = d.finish(run.token)
    assert d.e.is_lord
    assert lord_changes(got) == [True]
    assert logs(got)[0] == "[uwsgi-legion] i am now the Lord of the Legion test"
    assert sends(got) and sends(got)[0].lord == int(wall(d.t))


def test_failed_lord_actions_without_death_option_are_ignored():
    d = Driver(node(10, actions=[act("lord", "false")]))
    (run,) = runs(d.advance(E1), "lord")
    d.finish(run.token, failed=True)
    assert d.e.is_lord


def test_unrelated_action_results_change_nothing():
    d = Driver(node(10, actions=[act("setup")]))
    (run,) = runs(d.effects, "setup")
    assert d.finish(run.token, failed=True) == []
    assert d.finish(12345) == []


def test_better_node_arriving_while_lord_actions_run():
    d = Driver(node(10, actions=[act("lord", "slow"), act("unlord", "echo unlord")]))
    (run,) = runs(d.advance(E1), "lord")
    d.packet(ann(20, UUID_A, t=d.t))
    d.packet(agreeing(d.e, 20, UUID_A, t=d.t))
    got = d.finish(run.token)
    # hooks -> Lord (as uWSGI would after its blocking hooks) -> the next step sees the better node
    assert lord_changes(got) == [True, False]
    assert not d.e.is_lord
    assert len(runs(got, "unlord")) == 1


def test_death_on_lord_error_suspends_then_clears_dead():
    settings = dataclasses.replace(SETTINGS, death_on_lord_error=5)
    d = Driver(node(10, settings=settings, actions=[act("lord", "false")]))
    (run,) = runs(d.advance(E1), "lord")
    assert run.stop_on_error is True
    got = d.finish(run.token, failed=True)
    assert not d.e.is_lord and not lord_changes(got)
    (dead,) = sends(got)
    assert dead.dead is True
    assert "[uwsgi-legion] suspending myself from Legion \"test\" for 5 seconds" in logs(got)
    assert d.e.status()["suspended"] and d.e.status()["dead"]
    quiet = d.advance(E1 + 4.99)
    assert sends(quiet) == [] and not runs(quiet, "lord")
    back = d.advance(E1 + 5.5)
    assert sends(back) and all(not a.dead for a in sends(back))       # Q-L2: dead cleared
    assert not d.e.dead and not d.e.status()["suspended"]
    (retry,) = runs(back, "lord")                                      # and it competes again
    d.finish(retry.token)
    assert d.e.is_lord


def test_suspended_node_stays_silent_and_out_of_the_way():
    settings = dataclasses.replace(SETTINGS, death_on_lord_error=30)
    d = Driver(node(10, settings=settings, actions=[act("lord", "false")]))
    (run,) = runs(d.advance(E1), "lord")
    d.finish(run.token, failed=True)
    got = d.packet(ann(5, UUID_A, t=d.t, checksum=5 + sum(UUID_A.encode()), lord_valor=5, lord_uuid=UUID_A))
    got += d.advance(T0 + 20)
    assert sends(got) == [] and not runs(got, "lord") and not d.e.is_lord
    assert d.e.lord_valor == 10         # like uWSGI it keeps itself as candidate, but never claims


# --- timing ---------------------------------------------------------------------------------

def test_fixed_announce_schedule_under_a_packet_flood():
    d = Driver(node(10))
    announce_times = [T0]
    t = T0
    while t < T0 + 10:
        t = round(t + 0.05, 6)
        got = d.advance(t)
        d.packet(agreeing(d.e, 5, UUID_A, t=t))
        announce_times += [t] * len(sends(got))
    # one scheduled announcement per freq (plus the immediate Lord one), never postponed
    assert len(announce_times) in (11, 12)
    scheduled = [x for x in announce_times if abs((x - T0) - round(x - T0)) < 1e-6]
    assert [round(x - T0) for x in scheduled] == list(range(0, 11))


def test_missed_slots_are_skipped_not_bunched():
    d = Driver(node(10))
    got = d.e.tick(T0 + 5.5, wall(T0 + 5.5))      # the host was late by 4.5 s
    assert len(sends(got)) == 1
    assert d.e.next_deadline() == pytest.approx(T0 + 6)


def test_next_deadline_covers_member_expiry():
    d = Driver(node(10))
    d.advance(E1 + 0.2)
    d.packet(ann(20, UUID_A, t=d.t))
    assert d.e.next_deadline() == pytest.approx(E1 + 1)
    d.e._next_announce = math.inf                  # only the expiry left
    assert d.e.next_deadline() == pytest.approx(E1 + 3.2)


# --- stop and reload ---------------------------------------------------------------------------

def test_stop_runs_death_actions_and_announces_death():
    d = Driver(node(10, actions=[act("death", "echo bye"), act("unlord")]))
    d.advance(E1)
    assert d.e.is_lord
    got = d.e.stop(d.t, wall(d.t))
    assert [r.event for r in runs(got)] == ["death"]             # no unlord actions, like uWSGI
    (a,) = sends(got)
    assert a.dead and a.lord_valor == 10
    assert lord_changes(got) == [False]
    assert d.e.next_deadline() == math.inf
    assert d.e.tick(d.t + 5, wall(d.t + 5)) == []
    assert d.e.packet(ann(), d.t, wall(d.t)) == []
    assert d.e.stop(d.t, wall(d.t)) == []


def test_reload_announces_death_without_death_actions():
    d = Driver(node(10, actions=[act("death", "echo bye")]))
    got = d.e.reload(d.t, wall(d.t))
    assert runs(got) == [] and [a.dead for a in sends(got)] == [True]


def test_dead_announcement_even_while_suspended():
    settings = dataclasses.replace(SETTINGS, death_on_lord_error=30)
    d = Driver(node(10, settings=settings, actions=[act("lord", "false")]))
    (run,) = runs(d.advance(E1), "lord")
    d.finish(run.token, failed=True)
    assert [a.dead for a in sends(d.e.stop(d.t, wall(d.t)))] == [True]


# --- status ------------------------------------------------------------------------------------

def test_status_snapshot():
    d = Driver(node(10, scroll="mine"))
    d.advance(E1 - 0.5)
    d.packet(agreeing(d.e, 20, UUID_A, t=d.t, scroll=b"theirs"))
    d.advance(E1)
    s = d.e.status()
    assert s["lord"] is False and s["lord_since"] is None
    assert s["candidate"] == {"valor": 20, "uuid": UUID_A, "name": "peer"}
    assert s["lord_scroll"] == "theirs"
    assert s["votes"] == 2 and s["agreed"] and s["quorum"] == 0
    (m,) = s["members"]
    assert (m["name"], m["valor"], m["uuid"], m["arbiter"], m["scroll"]) == ("peer", 20, UUID_A, False, "theirs")
    assert m["last_seen"] == pytest.approx(wall(E1 - 0.5))


# --- a simulated cluster of Elections ----------------------------------------------------------

class Cluster:
    """Elections exchanging their Send effects instantly; lord actions finish after ``delay``."""

    def __init__(self, elections: list[Election], delay: float = 0.0, fail: set[str] = frozenset()):
        self.nodes = elections
        self.t = T0
        self.delay = delay
        self.fail = fail
        self.pending: list[tuple[float, Election, int]] = []
        self.down: set[int] = set()          # indexes whose packets are lost (crashed)
        self.history: list[tuple[float, str, bool]] = []
        for i, e in enumerate(elections):
            self.t = T0 + i * 0.137          # start at different phases
            self._handle(e, e.start(self.t, wall(self.t)))

    def _handle(self, origin: Election, effects: list) -> None:
        queue = [(origin, effects)]
        while queue:
            src, effs = queue.pop(0)
            for eff in effs:
                if isinstance(eff, Send) and self.nodes.index(src) not in self.down:
                    for dst in self.nodes:
                        if dst is not src and self.nodes.index(dst) not in self.down:
                            queue.append((dst, dst.packet(eff.announcement, self.t, wall(self.t))))
                elif isinstance(eff, RunActions) and eff.event == "lord":
                    self.pending.append((self.t + self.delay, src, eff.token))
                elif isinstance(eff, LordChanged):
                    self.history.append((self.t, src.name, eff.is_lord))
            if self.delay == 0:
                due = [p for p in self.pending if p[0] <= self.t]
                self.pending = [p for p in self.pending if p[0] > self.t]
                for _, e, token in due:
                    queue.append((e, e.actions_finished(token, e.name in self.fail, self.t, wall(self.t))))

    def run(self, until: float) -> None:
        while True:
            live = [e for i, e in enumerate(self.nodes) if i not in self.down]
            nxt = min([e.next_deadline() for e in live] + [p[0] for p in self.pending] + [math.inf])
            if nxt > until:
                break
            self.t = max(self.t, nxt)
            for when, e, token in [p for p in self.pending if p[0] <= self.t]:
                self.pending.remove((when, e, token))
                self._handle(e, e.actions_finished(token, e.name in self.fail, self.t, wall(self.t)))
            for e in live:
                if e.next_deadline() <= self.t:
                    self._handle(e, e.tick(self.t, wall(self.t)))
        self.t = until

    def lords(self) -> list[str]:
        return [e.name for i, e in enumerate(self.nodes) if e.is_lord and i not in self.down]


def cluster_nodes(valors, **kw) -> list[Election]:
    uuids = [f"{i:08x}-1111-4111-8111-111111111111" for i in range(len(valors))]
    return [Election(plan(v, **kw), SETTINGS, name=f"n{i}", pid=100 + i, uuid=uuids[i]) for i, v in enumerate(valors)]


@pytest.mark.parametrize("valors, winner", [([10, 20, 30], "n2"), ([30, 20, 10], "n0"), ([10, 0, 5], "n0"),
                                            ([7, 7, 7], "n2")])
def test_cluster_converges_on_the_best_node(valors, winner):
    c = Cluster(cluster_nodes(valors))
    c.run(T0 + 5)
    assert c.lords() == [winner]
    assert len({e.checksum for e in c.nodes}) == 1
    assert all(e.votes == 3 for e in c.nodes)


def test_cluster_failover_on_death_and_on_crash():
    c = Cluster(cluster_nodes([10, 20, 30]))
    c.run(T0 + 5)
    assert c.lords() == ["n2"]
    c._handle(c.nodes[2], c.nodes[2].stop(c.t, wall(c.t)))
    c.down.add(2)
    c.run(c.t + 1.5)                        # announced death: no need to wait for tolerance
    assert c.lords() == ["n1"]
    crash = c.t
    c.down.add(1)                           # n1 crashes silently
    c.run(crash + 2.5)
    assert c.lords() == []                  # n0 still waits for n1 to expire (3 s)
    c.run(crash + 4.5)
    assert c.lords() == ["n0"]


def test_cluster_with_slow_lord_actions_and_quorum():
    c = Cluster(cluster_nodes([10, 20, 30], quorum=3, actions=[act("lord", "slow")]), delay=2.0)
    c.run(T0 + 8)
    assert c.lords() == ["n2"]
    c.down.add(0)
    c.run(c.t + 4)                          # quorum lost once n0 expires: unlord at once
    assert c.lords() == []
    assert c.history[-1][1:] == ("n2", False)


def test_cluster_lord_error_suspension_hands_over_and_comes_back():
    nodes = [Election(plan(v, actions=[act("lord", "x")]), dataclasses.replace(SETTINGS, death_on_lord_error=4),
                      name=f"n{i}", pid=100 + i, uuid=f"{i:08x}-1111-4111-8111-111111111111")
             for i, v in enumerate([10, 20])]
    c = Cluster(nodes, fail={"n1"})
    c.run(T0 + 4)
    assert c.lords() == ["n0"]              # n1 failed its hooks, announced death, n0 took over
    c.fail = set()
    c.run(T0 + 12)
    assert c.lords() == ["n1"]              # back after its suspension (dead flag cleared), wins again


# --- properties ---------------------------------------------------------------------------------

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

_IDS = [(20, "p1", UUID_A), (5, "p2", UUID_B), (0, "arb", UUID_C), (10, "me", UUID_ME)]
_events = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.floats(0, 5)),
    st.tuples(st.just("packet"), st.floats(0, 2), st.sampled_from(_IDS), st.integers(0, 5000),
              st.sampled_from([0, 5, 10, 20]), st.sampled_from([NO_UUID, UUID_A.encode(), UUID_ME.encode()]),
              st.booleans(), st.integers(-100, 100)),
    st.tuples(st.just("finish"), st.booleans()),
), max_size=60)


@hsettings(max_examples=150, deadline=None)
@given(_events, st.sampled_from([0, 3]), st.integers(0, 3))
def test_random_histories_keep_the_machine_sane(events, death_on_error, quorum):
    s = dataclasses.replace(SETTINGS, death_on_lord_error=death_on_error)
    e = Election(plan(10, quorum=quorum, actions=[act("lord")]), s, name="me", pid=100, uuid=UUID_ME)
    t = T0
    out = e.start(t, wall(t))
    tokens = [r.token for r in runs(out, "lord")]
    for ev in events:
        if ev[0] == "tick":
            t = max(t, min(e.next_deadline(), t + ev[1]))
            out = e.tick(t, wall(t))
            assert e.next_deadline() > t            # progress: a due tick never leaves itself due
        elif ev[0] == "packet":
            _, dt, (valor, name, uuid), checksum, lord_valor, lord_uuid, dead, skew = ev
            t += dt
            out = e.packet(ann(valor, uuid, name=name, pid=7, t=t + skew, checksum=checksum,
                               lord_valor=lord_valor, lord_uuid=lord_uuid, dead=dead), t, wall(t))
        else:
            out = e.actions_finished(tokens.pop(0), ev[1], t, wall(t)) if tokens else []
        tokens += [r.token for r in runs(out, "lord")]
        assert len(tokens) <= 1                     # never two lord attempts at once
        assert all(not a.dead for a in sends(out)) or e.dead
        if e.is_lord:
            assert e.lord_valor == 10 and e.lord_uuid == UUID_ME.encode() or e.votes == 0
        assert len(sends(out)) <= 2
