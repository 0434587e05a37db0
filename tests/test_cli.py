"""The `hearth` command as a user runs it (a real process), against a real daemon.

Exit codes (DESIGN section 10): 0 success, 1 a refused request with one line on stderr, 2 bad usage.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios

import pytest

from conftest import PY, make_model, make_sparse_model
from hostile import CASES

MB = 1 << 20


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_no_daemon_is_a_refusal(make_daemon):
    d = make_daemon(start=False)
    for args in (["status"], ["status", "--json"], ["evict", "--all"], ["config"], ["preload", "x.safetensors"]):
        r = d.cli(*args)
        assert r.returncode == 1, (args, r)
        assert "not running" in _one_line(r)
        assert r.stdout == ""


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["status", "--bogus"], ["evict"], ["pin"],
                                  ["config", "a", "b", "c"], ["preload"], ["daemon", "--port", "x"]])
def test_bad_usage_exits_2(shared_daemon, args):
    r = shared_daemon.cli(*args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert r.stderr.strip()


def test_status_commands_do_not_import_torch(shared_daemon):
    code = ("import sys; from comfyui_hearth.cli import main; rc = main(['status']); "
            "print(rc, 'torch' in sys.modules, file=sys.stderr)")
    r = subprocess.run([PY, "-c", code], env=shared_daemon.env, capture_output=True, text=True, timeout=30)
    assert r.stderr.strip().splitlines()[-1] == "0 False", r.stderr


def test_status_text_and_json(daemon):
    d = daemon
    r = d.cli("status")
    assert r.returncode == 0, r.stderr
    assert "no models cached" in r.stdout and f"pid {d.proc.pid}" in r.stdout and "budget" in r.stdout
    p = make_model(d.models / "st.safetensors")
    d.acquire(p)
    d.acquire(p)
    r = d.cli("status")
    assert r.returncode == 0 and str(p) in r.stdout and "ready" in r.stdout and "hits 1" in r.stdout
    r = d.cli("status", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert [s["path"] for s in doc["segments"]] == [str(p)] and doc["stats"]["hits"] == 1


def test_preload_fills_and_reports(daemon):
    d = daemon
    a, b = make_model(d.models / "a.safetensors"), make_model(d.models / "b.safetensors", seed=1)
    r = d.cli("preload", str(a), str(b))
    assert r.returncode == 0, r.stderr
    # Not a terminal: one plain line per file, no bar, no carriage return (what scripts read).
    assert sorted(r.stderr.splitlines()) == [f"ready {a}", f"ready {b}"], r.stderr
    assert {s["path"]: s["state"] for s in d.status()["segments"]} == {str(a): "ready", str(b): "ready"}
    # relative paths are the caller's
    r = subprocess.run([PY, "-m", "comfyui_hearth.cli", "preload", "a.safetensors"], cwd=d.models, env=d.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"ready {a}" in r.stderr, r.stderr


def test_preload_more_files_than_fill_slots(make_daemon):
    """Files waiting for a fill slot are pending, not failed."""
    d = make_daemon()
    d.ok("POST", "/v1/config", {"max_fills": 1})
    d.stop()
    d.start()  # max_fills is read at start
    paths = [make_sparse_model(d.models / f"m{i}.safetensors", 64 * MB, seed=i) for i in range(3)]
    r = d.cli("preload", *map(str, paths))
    assert r.returncode == 0, r.stderr
    for p in paths:
        assert f"ready {p}" in r.stderr, r.stderr
    assert [s["state"] for s in d.status()["segments"]] == ["ready"] * 3


def test_preload_refusals_exit_1(daemon, tmp_path):
    d = daemon
    good = make_model(d.models / "good.safetensors")
    outside = make_model(tmp_path / "outside.safetensors")
    r = d.cli("preload", str(good), str(d.models / "missing.safetensors"), str(outside))
    assert r.returncode == 1
    assert f"ready {good}" in r.stderr and "no such file" in r.stderr and "outside the allowed" in r.stderr
    # a file that fails while filling (bad header) is a refusal too, with the reason
    bad = d.models / "bad.safetensors"
    bad.write_bytes(next(c for c in CASES if c[0] == "offsets_overlap")[1])
    r = d.cli("preload", str(bad))
    assert r.returncode == 1, r.stderr
    assert "overlaps" in r.stderr and str(bad) in r.stderr


def test_preload_shows_progress_on_a_terminal(daemon):
    d = daemon
    big = make_sparse_model(d.models / "big.safetensors", 768 * MB)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size: 100 columns
    proc = subprocess.Popen([PY, "-m", "comfyui_hearth.cli", "preload", str(big)], env=d.env,
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    out = b""
    while True:
        if select.select([master], [], [], 30)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if proc.poll() is not None and not select.select([master], [], [], 0.1)[0]:
            break
    proc.wait(30)
    os.close(master)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    # tqdm's bar, named after the file, while it fills (how far it got when polled depends on the machine's
    # speed), redrawn in place; then the same ready line as without a terminal, on a line of its own.
    assert "\rbig.safetensors:" in text and "B/s" in text, text
    assert re.search(r"\rbig\.safetensors: +\d+%\|[^|\r]*\| *[\d.]+\w?/7\d\dM \[", text), text  # name, %, bar, bytes
    assert f"\rready {big}\r\n" in text, text  # the bar cleared first, not left in front of the line


def test_evict(daemon):
    d = daemon
    a, b = make_model(d.models / "a.safetensors"), make_model(d.models / "b.safetensors", seed=1)
    d.acquire(a)
    d.acquire(b)
    r = d.cli("evict", str(a))
    assert r.returncode == 0 and f"evicted {a}" in r.stdout, r.stderr
    assert [s["path"] for s in d.status()["segments"]] == [str(b)]
    r = d.cli("evict", str(a))
    assert r.returncode == 1 and "not in the cache" in _one_line(r)
    r = d.cli("evict", "--all")
    assert r.returncode == 0 and f"evicted {b}" in r.stdout
    assert d.status()["segments"] == [] and d.final_names() == []


def test_evict_held_reports_holders(daemon):
    d = daemon
    a = make_model(d.models / "a.safetensors")
    holder = d.client(f"""
    r = load({str(a)!r})
    say(cached=r.cached)
    sys.stdin.readline()
    """)
    assert holder.read() == {"cached": True}
    r = d.cli("evict", str(a))
    assert r.returncode == 0, r.stderr
    assert "holder" in r.stdout and str(holder.pid) in r.stdout, r.stdout
    holder.tell()
    holder.finish()


def test_pin_unpin(daemon):
    d = daemon
    a = make_model(d.models / "a.safetensors")
    r = d.cli("pin", str(a))
    assert r.returncode == 0 and f"pinned {a}" in r.stdout, r.stderr
    d.wait_for(lambda: (s := d.segment(a)) and s["state"] == "ready", what="the pinned model to fill")
    assert d.segment(a)["pinned"]
    assert "pinned" in d.cli("status").stdout
    assert json.loads(d.cli("config", "pinned").stdout) == [str(a)]
    r = d.cli("unpin", str(a))
    assert r.returncode == 0 and f"unpinned {a}" in r.stdout
    assert not d.segment(a)["pinned"]
    r = d.cli("pin", str(d.models / "missing.safetensors"))
    assert r.returncode == 1 and "no such file" in _one_line(r)


def test_config(daemon):
    d = daemon
    r = d.cli("config")
    assert r.returncode == 0 and "budget = " in r.stdout and "max_fills = " in r.stdout
    assert json.loads(d.cli("config", "budget").stdout) == "auto"
    r = d.cli("config", "budget", "1G")
    assert r.returncode == 0, r.stderr
    assert json.loads(d.cli("config", "budget").stdout) == "1G"
    assert d.status()["budget"] == 1 << 30
    assert json.loads((d.home / "config.json").read_text())["budget"] == "1G"
    r = d.cli("config", "autostart", "yes")  # start at login is its own command: the files are the state
    assert r.returncode == 2 and "hearth autostart on|off" in r.stderr
    assert d.cli("config", "max_fills", "3").returncode == 0
    assert json.loads(d.cli("config", "max_fills").stdout) == 3
    extra = d.root / "extra"
    extra.mkdir()
    assert d.cli("config", "model_dirs", f"{extra}{os.pathsep}{d.models}").returncode == 0
    assert json.loads(d.cli("config", "model_dirs").stdout) == [str(extra), str(d.models)]
    # every value with where it comes from, the allowed folders in effect with theirs (HEARTH_MODEL_DIRS too)
    lines = {line.split(" = ")[0]: line for line in d.cli("config").stdout.splitlines()}
    assert lines["max_fills"] == "max_fills = 3  (config.json)"
    assert lines["prefetch"].endswith("(default)")
    assert f"{d.models} (HEARTH_MODEL_DIRS, config.json)" in lines["model_dirs"]
    assert f"{extra} (config.json)" in lines["model_dirs"]
    assert "1.0 GiB in effect" in lines["budget"]


@pytest.mark.parametrize("args", [["bogus"], ["bogus", "1"], ["budget", "lots"], ["max_fills", "0"],
                                  ["max_fills", "many"], ["budget", "1.5.5G"], ["budget", "250%"],
                                  ["budget", "inf"], ["budget", "nan"], ["budget", "1e999G"]])
def test_config_bad_key_or_value_is_bad_usage(shared_daemon, args):
    before = shared_daemon.ok("GET", "/v1/config")
    r = shared_daemon.cli("config", *args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert _one_line(r)
    assert shared_daemon.ok("GET", "/v1/config") == before


def test_daemon_command_reports_a_running_daemon(shared_daemon):
    r = shared_daemon.cli("daemon", "--headless")
    assert r.returncode == 0 and "already running" in r.stderr
