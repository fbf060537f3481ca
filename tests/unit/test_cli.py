"""`nsattach check` end to end: the seed examples, every bad input, exit statuses."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from nsattach.cli import main, parse_argv

SEED = pathlib.Path(__file__).resolve().parents[1] / "data" / "seed"
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def seed_blocks() -> list[str]:
    """The [uwsgi] examples of uWSGI's "managing external daemons" page, in page order."""
    blocks = [p.read_text() for p in sorted(SEED.glob("*.ini"))]
    assert len(blocks) == 9
    return blocks


def run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("index", range(9))
def test_every_seed_example_passes_check(index, tmp_path, capsys):
    block = seed_blocks()[index]
    ini = tmp_path / "seed.ini"
    ini.write_text(block)
    status, out, err = run(["check", "-c", str(ini)], capsys)
    assert status == 0, err
    assert "daemons (" in out
    if "socket = " in block:
        assert "warning: ignored uWSGI application-server options" in err and "socket" in err


def test_seed_plans_are_correct(tmp_path, capsys):
    blocks = seed_blocks()
    ini = tmp_path / "seed.ini"
    ini.write_text(blocks[5])      # delayed_job
    status, out, _ = run(["check", "--json", "-c", str(ini)], capsys)
    plan = json.loads(out)
    d = plan["daemons"][0]
    assert (d["name"], d["kind"], d["pidfile"], d["command"]) == (
        "delayed_job", "smart", "/var/apps/foobar/tmp/pids/delayed_job.pid", "/var/apps/foobar/script/delayed_job start")
    assert plan["master"]["env"] == [["RAILS_ENV", "production"]]
    assert plan["master"]["chdir"] == "/var/apps/foobar"
    ini.write_text(blocks[6])      # dropbear
    status, out, _ = run(["check", "--json", "-c", str(ini)], capsys)
    plan = json.loads(out)
    assert plan["namespace"]["root"] == "/ns/001" and plan["namespace"]["hostname"] == "testns"
    assert plan["hooks"][0]["phase"] == "as-root"
    ini.write_text(blocks[7])      # celery beat legion
    status, out, _ = run(["check", "--json", "-c", str(ini)], capsys)
    plan = json.loads(out)
    assert plan["legions"][0]["cipher"] == "bf-cbc" and plan["legions"][0]["secret"] == "***"
    assert plan["daemons"][0]["legion"] == "mylegion"


def test_bad_config_lists_every_problem_and_exits_100(tmp_path, capsys):
    ini = tmp_path / "bad.ini"
    ini.write_text("[uwsgi]\nattach-deamon = x\nattach-daemon2 = pidfile=/p\nreload-mercy = soon\n"
                   "attach-daemon2 = cmd=x,uid=no-such-user-zz\n")
    status, out, err = run(["check", "-c", str(ini)], capsys)
    assert status == 100 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"{ini}:2: attach-deamon: unknown option (did you mean 'attach-daemon'?")
    assert lines[1] == f"{ini}:3: attach-daemon2: you need to specify a 'command' key (command=, cmd= or exec=)"
    assert lines[2] == f"{ini}:4: reload-mercy: 'soon' is not a whole number"
    assert lines[3].startswith(f"{ini}:5: attach-daemon2: uid: user 'no-such-user-zz' not found")
    assert lines[4] == "nsattach: 4 configuration problems; nothing was started"


def test_run_mode_validates_before_starting_anything(tmp_path, capsys):
    marker = tmp_path / "started"
    ini = tmp_path / "bad.ini"
    ini.write_text(f"[uwsgi]\nattach-daemon = touch {marker}\nattach-daemon2 = cmd=x,daemonize=1\n")
    status, _, err = run(["-c", str(ini)], capsys)
    assert status == 100
    assert "daemonize needs a pidfile" in err
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary", b"[uwsgi]\nattach-daemon = a\x00b\n",
                                     b"[uwsgi]\nkey = " + b"x" * 70000 + b"\n", b"\xff\xfe\xfa not utf-8"])
def test_junk_files_give_a_clean_error(content, tmp_path, capsys):
    ini = tmp_path / "junk.ini"
    ini.write_bytes(content)
    status, out, err = run(["check", "-c", str(ini)], capsys)
    assert status == 100
    assert "Traceback" not in err and str(ini) in err


def test_unreadable_file_and_directory(tmp_path, capsys):
    status, _, err = run(["check", "-c", str(tmp_path / "missing.ini")], capsys)
    assert status == 100 and "missing.ini" in err and "No such file" in err
    status, _, err = run(["check", "-c", str(tmp_path)], capsys)
    assert status == 100 and str(tmp_path) in err


def test_every_key_works_on_the_command_line(capsys):
    status, out, _ = run(["check", "--attach-daemon", "memcached -p 11311", "--reload-mercy=7", "--vacuum",
                          "--pidfile", "/tmp/m.pid"], capsys)
    assert status == 0
    assert "memcached  (attach-daemon, dumb)  <command line>:2" in out
    assert "reload-mercy: 7 s" in out and "vacuum" in out


def test_command_line_errors_point_at_the_argument(capsys):
    status, _, err = run(["check", "--attach-deamon", "x"], capsys)
    assert status == 100
    assert err.startswith("<command line>:2: attach-deamon: unknown option")


def test_section_selection_and_nsattach_section(tmp_path, capsys):
    ini = tmp_path / "multi.ini"
    ini.write_text("[uwsgi]\nattach-daemon = a\n[other]\nattach-daemon = b\n[nsattach]\nattach-daemon = c\n")
    status, out, _ = run(["check", "-c", f"{ini}:other"], capsys)
    assert status == 0 and "command: b" in out and "command: a" not in out
    status, out, _ = run(["check", "-c", str(ini)], capsys)
    assert "command: a" in out and "command: c" in out and "command: b" not in out


def test_help_options_comes_from_the_table(capsys):
    from nsattach.config.options import canonical_options

    status, out, _ = run(["--help-options"], capsys)
    assert status == 0
    for opt in canonical_options():
        assert opt.name in out
    assert "smart-attach-daemon = PIDFILE[,FREQ] COMMAND" in out


def test_usage_errors_exit_2(capsys):
    assert run(["check", "-c"], capsys)[0] == 2
    assert run(["check"], capsys)[0] == 2
    assert run(["--version"], capsys)[1].startswith("nsattach ")


def test_parse_argv_positional_ini_and_flags():
    inv = parse_argv(["check", "a.ini", "--master", "--attach-daemon", "x"])
    assert inv.verb == "check" and inv.config_args == ["a.ini"]
    assert inv.cli_entries == [("master", "", 3), ("attach-daemon", "x", 4)]


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.ini")), ids=lambda p: p.name)
def test_bundled_examples_pass_check(example, capsys):
    status, _, err = run(["check", "-c", str(example)], capsys)
    assert status == 0, err


def test_python_dash_m_entry_point(tmp_path):
    ini = tmp_path / "x.ini"
    ini.write_text("[uwsgi]\nattach-daemon = sleep 1\n")
    proc = subprocess.run([sys.executable, "-m", "nsattach", "check", "-c", str(ini)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and "sleep" in proc.stdout
