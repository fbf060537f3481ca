"""The control socket and CLI verbs, systemd notifications and daemon output capture,
against a running master with real daemons."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from harness import alive, wait_for

pytestmark = pytest.mark.root


def ini(tmp_path, body: str) -> str:
    return f"[uwsgi]\ncontrol-socket = {tmp_path}/ctl.sock\n" + body


def status(m) -> dict:
    r = m.ctl("status", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    return {d["name"]: d for d in data["daemons"]} | {"": data["master"]}


def test_status_shows_each_daemon_and_follows_events(master, tmp_path):
    m = master(ini(tmp_path, "attach-daemon = sleep 1000\nattach-daemon2 = cmd=sleep 1001,name=two\n"))
    first = m.spawned_pid("sleep")
    m.spawned_pid("two")
    st = status(m)
    assert st[""]["pid"] == m.pid and st[""]["config"] == [str(m.config)]
    assert st["sleep"]["state"] == "running" and st["sleep"]["pid"] == first and st["sleep"]["respawns"] == 0
    assert st["sleep"]["kind"] == "dumb" and st["sleep"]["stop_signal"] == "SIGTERM"
    os.kill(first, signal.SIGKILL)
    second = m.spawned_pid("sleep", count=2)
    st = status(m)
    assert st["sleep"]["pid"] == second and st["sleep"]["respawns"] == 1
    assert st["sleep"]["last_exit"] == "exited by signal 9"
    text = m.ctl("status").stdout
    assert f"nsattach master pid {m.pid}" in text and "two" in text and "running" in text


def test_stop_start_restart_signal_answer_what_happened(master, tmp_path):
    marker = tmp_path / "hup"
    m = master(ini(tmp_path, f"attach-daemon2 = cmd=trap 'echo HUP >> {marker}' HUP; while :; do sleep 0.05; done,name=t\n"
                             "attach-daemon = sleep 1000\n"))
    pid = m.spawned_pid("t")
    other = m.spawned_pid("sleep")
    wait_for(lambda: "sleep" in [p.name() for p in m.children() if p.ppid() == pid], what="loop running")
    r = m.ctl("signal", "t", "HUP")
    assert r.returncode == 0 and r.stdout.strip() == f"t: signal SIGHUP sent to pid {pid}"
    wait_for(lambda: marker.exists() and "HUP" in marker.read_text(), what="trap ran")
    r = m.ctl("stop", "t")
    assert r.returncode == 0 and r.stdout.startswith("t: stopped (exited")
    assert not alive(pid) and alive(other)                 # only that daemon
    r = m.ctl("restart", "sleep")
    assert r.returncode == 0 and r.stdout.startswith("sleep: running (pid ")
    assert not alive(other)
    r = m.ctl("start", "t")
    assert r.returncode == 0 and r.stdout.startswith("t: running (pid ")
    r = m.ctl("stop", "nope")
    assert r.returncode == 1 and "nope: no such daemon" in r.stderr


def test_operator_stop_survives_reload_and_stays_down(master, tmp_path):
    m = master(ini(tmp_path, "attach-daemon = sleep 1000\n"))
    m.spawned_pid("sleep")
    assert m.ctl("stop", "sleep").returncode == 0
    assert m.ctl("reload").returncode == 0
    m.wait_log("reload done")
    assert status(m)["sleep"]["state"] == "stopped" and status(m)["sleep"]["held"] is True
    assert m.log().count("[sleep] pid") == 1
    assert m.ctl("start", "sleep").returncode == 0
    assert m.log().count("[sleep] pid") == 2


def test_reload_with_errors_is_reported_with_exit_status(master, tmp_path):
    m = master(ini(tmp_path, "attach-daemon = sleep 1000\n"))
    m.spawned_pid("sleep")
    m.config.write_text(m.config.read_text() + "attach-deamon = typo\n")
    r = m.ctl("reload")
    assert r.returncode == 1
    assert "still running the previous one" in r.stderr and "attach-deamon: unknown option" in r.stderr


def test_shutdown_stops_the_master(master, tmp_path):
    m = master(ini(tmp_path, "attach-daemon = sleep 1000\n"))
    pid = m.spawned_pid("sleep")
    r = m.ctl("shutdown")
    assert r.returncode == 0 and "stopping nsattach" in r.stdout
    assert m.wait_exit() == 0 and not alive(pid)
    assert not (tmp_path / "ctl.sock").exists()
    assert m.ctl("status").returncode == 3


def test_garbage_and_silence_on_the_socket_never_hurt_the_master(master, tmp_path):
    m = master(ini(tmp_path, "attach-daemon = sleep 1000\n"))
    m.spawned_pid("sleep")
    path = str(tmp_path / "ctl.sock")

    def raw(data: bytes, read=True):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        reply = s.recv(65536) if read else b""
        s.close()
        return reply

    assert json.loads(raw(b"garbage\n"))["ok"] is False
    assert "unknown command" in json.loads(raw(b'{"cmd": "explode"}\n'))["message"]
    assert json.loads(raw(b'{"cmd": "stop", "names": []}\n'))["ok"] is False
    assert json.loads(raw(b'["a list"]\n'))["ok"] is False
    assert "larger than" in json.loads(raw(b"x" * 70000))["message"]
    raw(b'{"cmd": "sta', read=False)                  # half a request, then gone
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(path)                               # connected, says nothing
    try:
        assert status(m)["sleep"]["state"] == "running"
    finally:
        silent.close()


def test_clients_other_than_root_are_refused(master, tmp_path, public_tmp):
    path = f"{public_tmp}/ctl.sock"
    m = master(f"[uwsgi]\ncontrol-socket = {path}\nattach-daemon = sleep 1000\n")
    m.spawned_pid("sleep")
    os.chmod(path, 0o666)           # let the connection through to see the credential check
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(path)
            try:
                s.sendall(b'{"cmd": "shutdown"}\n')
            except OSError:
                pass            # the master may answer and hang up before the request is sent
            os.write(w, s.recv(4096))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    reply = json.loads(data)
    assert reply["ok"] is False and "permission denied" in reply["message"]
    assert "refused a request from uid 65534" in m.log()
    assert m.proc.poll() is None and alive(m.pid)


def test_second_master_on_the_same_socket_refuses_to_start(master, tmp_path):
    body = ini(tmp_path, "attach-daemon = sleep 1000\n")
    m = master(body)
    m.spawned_pid("sleep")
    m2 = master(body, name="again.ini")
    assert m2.wait_exit() == 1
    assert "another nsattach is running" in m2.log()
    assert "spawning" not in m2.log()


def test_sd_notify_ready_reload_watchdog_stopping(master, tmp_path):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(5)
    try:
        m = master(ini(tmp_path, "attach-daemon = sleep 1000\n"),
                   env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})

        def next_message(key: str) -> str:
            end = time.monotonic() + 10
            while time.monotonic() < end:
                msg = listener.recv(4096).decode()
                if key in msg.split("\n"):
                    return msg
            raise AssertionError(f"no {key}")

        ready = next_message("READY=1")
        assert "STATUS=1 daemon(s): 1 running" in ready
        next_message("WATCHDOG=1")
        next_message("WATCHDOG=1")
        m.signal(signal.SIGHUP)
        next_message("RELOADING=1")
        next_message("READY=1")
        m.signal(signal.SIGTERM)
        next_message("STOPPING=1")
        assert m.wait_exit() == 0
    finally:
        listener.close()


def test_tagged_output_and_per_daemon_files_with_reopen(master, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    m = master(ini(tmp_path, f"""
attach-daemon2 = cmd=while :; do echo hello-tag; sleep 0.1; done,name=tagged,output=tag
attach-daemon2 = cmd=while :; do echo to-file; sleep 0.1; done,name=filed,output={logdir}/filed.log
"""))
    m.wait_log(r"\[tagged\] hello-tag")
    logfile = logdir / "filed.log"
    wait_for(lambda: logfile.exists() and "to-file" in logfile.read_text(), what="file output")
    assert "] to-file" not in m.log()       # the file's lines are not in the master's log
    logfile.rename(logdir / "filed.log.1")
    assert m.ctl("reopen-logs").returncode == 0
    wait_for(lambda: logfile.exists() and "to-file" in logfile.read_text(), what="reopened file")
    m.children()


def test_a_flooding_daemon_does_not_delay_a_respawn(master, tmp_path):
    m = master(ini(tmp_path, """
attach-daemon2 = cmd=yes 0123456789012345678901234567890123456789,name=flood,output=/dev/null
attach-daemon2 = cmd=head -c 300000 /dev/zero | tr '\\\\0' x; exec sleep 1000,name=noline,output=tag
attach-daemon = sleep 1000
"""))
    victim = m.spawned_pid("sleep")
    m.wait_log(r"\[noline\] x{16384}\n")              # a line with no newline is cut, not buffered forever
    flood = m.spawned_pid("flood")
    wait_for(lambda: alive(flood) and os.stat(f"/proc/{flood}/io") and True, what="flood running")
    os.kill(victim, signal.SIGKILL)
    m.spawned_pid("sleep", count=2, timeout=3.0)       # respawned promptly despite the flood
    assert m.ctl("status").returncode == 0


def test_master_fifo_uwsgi_commands(master, tmp_path):
    fifo = tmp_path / "fifo"
    fifo2 = tmp_path / "fifo2"
    m = master(ini(tmp_path, f"master-fifo = {fifo}\nmaster-fifo = {fifo2}\nattach-daemon = sleep 1000\n"))
    first = m.spawned_pid("sleep")
    wait_for(fifo.exists, what="fifo created")

    def send(path, data: bytes):
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, data)
        os.close(fd)

    send(fifo, b"r")                                   # graceful reload: dumb daemon restarted
    m.spawned_pid("sleep", count=2)
    assert not alive(first)
    send(fifo, b"1")                                   # switch the active fifo
    m.wait_log("active master fifo is now")
    wait_for(fifo2.exists, what="second fifo")
    send(fifo2, b"q")
    assert m.wait_exit() == 0


def test_operator_stop_survives_a_restart_of_nsattach(master, tmp_path):
    body = ini(tmp_path, "attach-daemon = sleep 1000091\nattach-daemon2 = cmd=sleep 1000092,name=other\n")
    m = master(body)
    m.spawned_pid("sleep")
    m.spawned_pid("other")
    assert m.ctl("stop", "sleep").returncode == 0
    assert m.stop() == 0
    m2 = master(body)
    m2.spawned_pid("other")
    m2.wait_log("sleep stays stopped: an operator stopped it")
    assert "[sleep] pid" not in m2.log()
    assert m2.ctl("start", "sleep").returncode == 0
    assert m2.stop() == 0
    m3 = master(body)
    m3.spawned_pid("sleep")                     # started again: nothing held any more
