"""The namespace jail seen from the kernel's side: namespaces, PID 1, hostname, the mount table
inside, what the jail cannot reach, keep-mounts (read-only too), the private /dev, the monitor
(signals, reload without rebuild, rebuild on request, death), and failures that name their step."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from harness import alive, ns_pids, wait_for
from rig import ns_inode

pytestmark = pytest.mark.root


def read_mount_points(pid: int) -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


def test_jail_from_inside(nsattach, rootfs, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("host only\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("from the host\n")
    out = f"/tmp/{tmp_path.name}-inside"
    (rootfs / out.lstrip("/")).mkdir()
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        pidfile = {tmp_path}/monitor.pid
        namespace = {rootfs}:nsajail
        namespace-keep-mount = {shared}:/shared
        namespace-keep-mount-ro = {shared}:/usr
        exec-in-jail = cat {secret} > {out}/secret 2>&1 || echo CANNOT >> {out}/secret
        exec-in-jail = cat /../../..{secret} > {out}/secret2 2>&1 || echo CANNOT >> {out}/secret2
        exec-as-user = echo written > /shared/rw && cat /usr/hello > {out}/ro-read
        exec-as-user = (echo x > /usr/nope) 2> {out}/ro-write || true
        hook-master-start = exec:ps -o pid,comm > {out}/ps
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.wait_log(r"spawning \"sleep 1000\"")
    assert int((tmp_path / "monitor.pid").read_text()) == n.pid          # the pidfile names the monitor

    # new mount, PID, UTS and IPC namespaces; the network is the host's (no namespace-net)
    for kind in ("mnt", "pid", "uts", "ipc"):
        assert ns_inode(jail, kind) != ns_inode("self", kind), kind
    assert ns_inode(jail, "net") == ns_inode("self", "net")
    assert ns_pids(jail)[1:] == [1]                                      # PID 1 inside
    assert psutil.Process(jail).ppid() == n.pid                          # the monitor's child
    uts = subprocess.run(["nsenter", "-t", str(jail), "-u", "hostname"], capture_output=True, text=True)
    assert uts.stdout.strip() == "nsajail"
    assert os.uname().nodename != "nsajail"

    # the jail's mount table holds only /, /proc and the keep-mounts
    assert read_mount_points(jail) == ["/", "/proc", "/shared", "/usr"]
    wait_for(lambda: (rootfs / out.lstrip("/") / "ps").exists(), what="ps output")
    inside = rootfs / out.lstrip("/")
    assert "CANNOT" in (inside / "secret").read_text() and "host only" not in (inside / "secret").read_text()
    assert "CANNOT" in (inside / "secret2").read_text()
    assert (shared / "rw").read_text() == "written\n"
    assert (inside / "ro-read").read_text() == "from the host\n"
    assert "Read-only file system" in (inside / "ro-write").read_text()
    ps = (inside / "ps").read_text().split("\n")[1:]
    pids = sorted(int(line.split()[0]) for line in ps if line.strip())
    assert pids[0] == 1 and max(pids) < 50                               # only the jail's own processes
    comms = {line.split()[1] for line in ps if line.strip()}
    assert "sleep" in comms and "pytest" not in " ".join(comms)

    sleeper = n.host_pid_of(n.daemon_pid("sleep"), jail)
    assert n.stop() == 0
    assert not alive(jail) and not alive(sleeper)
    assert "exited with status 0" in n.log()


def test_namespace_slash_keeps_the_host_mounts(nsattach, tmp_path):
    n = nsattach("""
        [uwsgi]
        control-socket = off
        namespace = /:nsaslash
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.wait_log(r"spawning \"sleep 1000\"")
    assert ns_pids(jail)[1:] == [1]
    points = read_mount_points(jail)
    assert "/proc" in points and "/sys" in points          # nothing unmounted (uWSGI: everything, Q-N8)
    uts = subprocess.run(["nsenter", "-t", str(jail), "-u", "hostname"], capture_output=True, text=True)
    assert uts.stdout.strip() == "nsaslash"
    # the jail's /proc is its own: PID 1 there is the jailed master
    proc1 = subprocess.run(["nsenter", "-t", str(jail), "-m", "cat", "/proc/1/cmdline"], capture_output=True)
    assert b"nsattach" in proc1.stdout
    assert n.stop() == 0


def test_missing_proc_names_step_path_errno_and_fix(nsattach, tmp_path):
    root = tmp_path / "noproc"
    (root / "bin").mkdir(parents=True)
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {root}
        attach-daemon = sleep 1000
    """)
    assert n.wait_exit() == 1
    log = n.log()
    assert f"jail: mount proc {root}/proc: No such file or directory [ENOENT]" in log
    assert f"mkdir {root}/proc" in log
    assert "spawning" not in log


def test_missing_jail_directory(nsattach, tmp_path):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {tmp_path}/nowhere
        attach-daemon = sleep 1000
    """)
    assert n.wait_exit() == 1
    assert f"check the jail directory {tmp_path}/nowhere: No such file or directory" in n.log()


def test_keep_mount_target_missing_is_fatal(nsattach, rootfs, tmp_path):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        namespace-keep-mount = {tmp_path}:/no/such/dir
        attach-daemon = sleep 1000
    """)
    assert n.wait_exit() == 1
    assert f"create it in the jail first: mkdir -p {rootfs}/no/such/dir" in n.log()
    assert "spawning" not in n.log()


def test_keep_mount_symlink_out_of_the_jail_is_refused(nsattach, rootfs, tmp_path):
    link = rootfs / "tmp" / f"{tmp_path.name}-escape"
    os.symlink(str(tmp_path), link)
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        namespace-keep-mount = /usr:/tmp/{link.name}
        attach-daemon = sleep 1000
    """)
    assert n.wait_exit() == 1
    assert "outside the jail" in n.log()


def test_monitor_death_takes_the_jail(nsattach, rootfs):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.wait_log(r"spawning \"sleep 1000\"")
    sleeper = n.host_pid_of(n.daemon_pid("sleep"), jail)
    os.kill(n.pid, signal.SIGKILL)
    wait_for(lambda: not alive(jail) and not alive(sleeper), what="the jail to die with its monitor")


def test_reload_in_the_jail_keeps_the_jail(nsattach, rootfs):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    first = n.daemon_pid("sleep")
    n.config.write_text(n.config.read_text() + "attach-daemon = sleep 1001\n")
    n.signal(signal.SIGHUP)
    n.wait_log(r"reload done: 2 daemon\(s\) configured")
    n.daemon_pid("sleep-2")
    assert alive(jail) and n.log().count("*** jailing") == 1        # no new jail (Q-N3)
    assert n.daemon_pid("sleep", count=2) != first
    assert n.stop() == 0


def test_rebuild_only_when_asked_and_throttled(nsattach, rootfs):
    # the jailed master exits with the reserved status: the monitor builds a fresh jail
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        hook-master-start = exit:75
        attach-daemon = sleep 1000
    """)
    n.wait_log(r"\*\*\* jailing", count=3, timeout=10)
    log = n.log()
    assert "rebuilding in 1 s" in log                  # the second quick rebuild waits
    n.signal(signal.SIGTERM)
    assert n.wait_exit() == 0


def test_stop_exits_with_the_status_and_never_respawns(nsattach, rootfs):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        attach-control-daemon = sleep 0.5; exit 3
    """)
    assert n.wait_exit() == 1                # the control daemon stopped the jailed master with 1
    assert n.log().count("*** jailing") == 1


def test_stop_during_startup(nsattach, rootfs):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        exec-post-jail = sleep 1
        attach-daemon = sleep 1000
    """)
    n.wait_log(r"running \"sleep 1\" \(post-jail\)")
    n.signal(signal.SIGTERM)
    assert n.wait_exit() == 0
    assert "spawning" not in n.log()


def test_private_dev_on_a_bare_rootfs(nsattach, bare_rootfs, tmp_path):
    out = f"/tmp/{tmp_path.name}-dev"
    (bare_rootfs / out.lstrip("/")).mkdir()
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {bare_rootfs}
        namespace-private-dev = true
        exec-as-user = ls /dev > {out}/ls; ls /dev/pts > {out}/pts; head -c 8 /dev/urandom | wc -c > {out}/random
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.wait_log(r"spawning \"sleep 1000\"")          # stdin is /dev/null: the spawn needs it
    inside = bare_rootfs / out.lstrip("/")
    names = set((inside / "ls").read_text().split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd"} <= names
    assert (inside / "pts").read_text().split() == ["ptmx"]      # a new devpts: none of the host's ptys
    assert (inside / "random").read_text().strip() == "8"
    points = read_mount_points(jail)
    assert "/dev" in points and "/dev/pts" in points and "/dev/null" in points
    with open(f"/proc/{jail}/mountinfo") as f:
        pts = [line for line in f if line.split()[4] == "/dev/pts"][0]
    assert os.stat("/dev/pts").st_dev != os.stat(f"/proc/{jail}/root/dev/pts").st_dev
    assert "devpts" in pts
    assert not any((bare_rootfs / "dev").iterdir())            # nothing written into the rootfs
    assert n.stop() == 0


def test_without_dev_nodes_the_daemon_spawn_says_why(nsattach, bare_rootfs):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {bare_rootfs}
        attach-daemon2 = cmd=sleep 1000,name=nodev,max_throttle=1
    """)
    n.wait_log(r'unable to spawn "sleep 1000": open-devnull\("/dev/null", O_RDWR\): No such file or directory')
    assert n.stop() == 0


def test_seconds_to_build_a_jail(nsattach, rootfs):
    start = time.monotonic()
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        attach-daemon = sleep 1000
    """)
    n.wait_log(r"spawning \"sleep 1000\"")
    assert time.monotonic() - start < 5
    assert n.stop() == 0


def test_reload_that_changes_the_jail_rebuilds_it(nsattach, rootfs):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}:nsabefore
        attach-daemon = sleep 1000
    """)
    first = n.jail_pid()
    n.daemon_pid("sleep")
    n.config.write_text(n.config.read_text().replace("nsabefore", "nsaafter"))
    n.signal(signal.SIGHUP)
    n.wait_log(r"\*\*\* jailing", count=2)
    n.daemon_pid("sleep", count=2)
    second = int(n.wait_log(r"jailed master is pid (\d+)", count=2)[-1].group(1))
    assert second != first and not alive(first)
    uts = subprocess.run(["nsenter", "-t", str(second), "-u", "hostname"], capture_output=True, text=True)
    assert uts.stdout.strip() == "nsaafter"
    assert n.stop() == 0
