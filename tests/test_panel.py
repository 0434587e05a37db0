"""The standalone web panel: served by a real daemon without a token, shown in a real headless Chromium.

The page and its static files are public; every API route still needs the token. The browser test opens
the page with the token in the URL fragment, as the tray does, and reads the rendered DOM.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import make_model

WEB = Path(__file__).resolve().parents[1] / "web"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
JS_TYPES = ("text/javascript", "application/javascript")


def fetch(daemon, path: str, headers: dict | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode(errors="replace")
    finally:
        conn.close()


def test_page_and_static_files_are_public_and_the_api_is_not(daemon):
    status, ctype, page = fetch(daemon, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert "/panel/lib/daemon.js" in page and "/panel/lib/panel.css" in page
    for name in ("lib/panel.js", "lib/dom.js", "lib/daemon.js", "hearth.js"):
        status, ctype, body = fetch(daemon, f"/panel/{name}")
        assert status == 200, name
        assert ctype.split(";")[0] in JS_TYPES, (name, ctype)  # browsers refuse modules of other types
        assert body == (WEB / name).read_text()
    status, ctype, _ = fetch(daemon, "/panel/lib/panel.css")
    assert status == 200 and ctype.startswith("text/css")

    assert daemon.api("GET", "/v1/status", token=None)[0] == 401
    assert daemon.api("GET", "/v1/status", token="not-the-token")[0] == 401
    assert daemon.api("POST", "/v1/evict", {"all": True}, token=None)[0] == 401
    assert fetch(daemon, "/v1/events?token=wrong")[0] == 401


IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", re.M)


def test_every_module_import_resolves():
    """Relative imports of the panel's modules point at files that exist (ComfyUI's own scripts aside)."""
    sources = sorted(WEB.rglob("*.js")) + [WEB / "panel.html"]
    for src in sources:
        for spec in IMPORT.findall(src.read_text()):
            if spec.startswith("../../scripts/"):
                assert src.parent == WEB, f"{src}: only the entry module can reach ComfyUI's scripts"
                continue
            target = WEB / spec.removeprefix("/panel/") if spec.startswith("/panel/") else src.parent / spec
            assert target.is_file(), f"{src.name} imports {spec}, which is not in web/"


def test_shared_modules_have_no_side_effects_on_import():
    """ComfyUI imports every .js under web/ as an extension: only hearth.js may act at import."""
    allowed = re.compile(r"^(import |export |const [A-Z_]+ = |function |class |//|/\*| \*|\}|\]|\)|$)")
    for src in sorted((WEB / "lib").glob("*.js")):
        for n, line in enumerate(src.read_text().splitlines(), 1):
            if line and not line.startswith((" ", "\t")):
                assert allowed.match(line), f"{src.name}:{n} runs at import: {line!r}"


# ---- in a real browser ---------------------------------------------------------------------------

def render(url: str, profile: Path, budget_ms: int = 4000) -> str:
    """The DOM of `url` after `budget_ms` of virtual time in headless Chromium."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
           "--dump-dom", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


@needs_chromium
def test_browser_shows_a_preloaded_segment(daemon, tmp_path):
    model = make_model(daemon.models / "panel-model.safetensors", numel=1 << 16)
    answer = daemon.ok("POST", "/v1/preload", {"paths": [str(model)]})
    [queued] = answer["queued"]
    daemon.wait_for(lambda: (daemon.segment(model) or {}).get("state") == "ready", what="the preload")

    dom = render(f"http://127.0.0.1:{daemon.port}/#token={daemon.token}", tmp_path / "profile")
    assert "daemon up" in dom, dom[-3000:]
    row = re.search(rf'<div class="hearth-tr" role="row" data-key="{queued["key"]}" data-state="ready"[^>]*>'
                    r'(.*?)</div>', dom, re.S)
    assert row, dom[-3000:]
    assert "panel-model.safetensors" in row.group(1)
    assert "Cached models (1)" in dom
    assert daemon.token not in dom


@needs_chromium
def test_browser_without_a_good_token_asks_for_one(daemon, tmp_path):
    dom = render(f"http://127.0.0.1:{daemon.port}/", tmp_path / "p1", budget_ms=1500)
    assert "needs the daemon's token" in dom and 'class="hearth-token"' in dom
    dom = render(f"http://127.0.0.1:{daemon.port}/#token=wrong", tmp_path / "p2", budget_ms=3000)
    assert "refused this token" in dom and "daemon up" not in dom


# ---- driven in a real browser (DevTools protocol: harness/browser.py) ------------------------------

def _row(key: str) -> str:
    return f'.hearth-cache .hearth-tr[data-key="{key}"]'


def _activity(page) -> str:
    return page.text(".hearth-activity")


def _stats(page) -> dict[str, int]:
    return page.eval("""Object.fromEntries([...document.querySelectorAll('.hearth-stat')]
        .map((s) => [s.dataset.stat, Number(s.querySelector('b').textContent)]))""")


@needs_chromium
def test_panel_preload_pin_evict_settings_and_a_daemon_restart(make_daemon, tmp_path):
    """The standalone panel as a user works it: preload from the model list, pin and unpin, a model in use,
    evict, settings changed; then the daemon restarts on the same port and the panel picks up the same
    counters and the same history, and a reload of the page shows them too."""
    from comfyui_hearth.core import login_units
    from harness.browser import Browser
    from harness.server import free_port

    xdg = tmp_path / "xdg"
    d = make_daemon(env={"HEARTH_PORT": str(free_port()), "XDG_CONFIG_HOME": str(xdg)})
    a = make_model(d.models / "sd15" / "base.safetensors", numel=1 << 16)
    make_model(d.models / "lora-b.safetensors", seed=2)
    url = f"http://127.0.0.1:{d.port}/#token={d.token}"
    name_input = '.hearth-preload input[aria-label="Model name"]'

    with Browser(tmp_path / "profile") as browser:
        page = browser.page(url)
        page.wait("!!document.querySelector('.hearth-state.is-up')", what="the panel")
        # The picker lists the files under the allowed folder, named relative to it
        options = page.wait("""(() => { const o = [...document.querySelectorAll('.hearth-preload datalist option')]
            .map((x) => x.value); return o.length === 2 && o; })()""", what="the model list")
        assert options == ["lora-b.safetensors", "sd15/base.safetensors"]
        assert page.eval(f"document.querySelector('{name_input}').placeholder") == "2 models…"

        page.type(name_input, "sd15/base.safetensors", enter=True)
        seg = d.wait_for(lambda: d.segment(a), what="the preload")
        key = seg["key"]
        page.wait(f"document.querySelector('{_row(key)}')?.dataset.state === 'ready'", what="the ready row")
        assert page.eval(f"document.querySelector('{name_input}').value") == ""

        # Pin: a labelled badge that explains itself; unpin; both in the activity
        page.click(f"{_row(key)} .hearth-actions button:first-child")
        badge = page.wait(f"document.querySelector('{_row(key)} .hearth-badge.is-pinned')?.title", what="the badge")
        assert "never evicted" in badge and page.text(f"{_row(key)} .hearth-badge.is-pinned") == "pinned"
        assert d.segment(a)["pinned"] is True
        page.wait("document.querySelector('.hearth-activity')?.innerText.includes('base.safetensors pinned')")
        page.click(f"{_row(key)} .hearth-actions button:first-child")
        page.wait(f"document.querySelector('{_row(key)}')?.dataset.pinned === 'no'")
        page.wait("document.querySelector('.hearth-activity')?.innerText.includes('base.safetensors unpinned')")
        assert d.segment(a)["pinned"] is False

        # A process maps it: "in use" (not a last use that ages) and who holds it, by name
        c = d.client(f"""
            sd = load_state_dict({str(a)!r})
            say(loaded=len(sd))
            sys.stdin.readline()
        """)
        c.read()
        held = page.wait(f"""(() => {{ const r = document.querySelector('{_row(key)}');
            return r && r.querySelector('.hearth-inuse') && r.querySelector('.hearth-holders').innerText; }})()""",
                         what="the holder")
        assert held == f"python -c (pid {c.pid})", held
        page.wait("document.querySelector('.hearth-activity')?.innerText"
                  f".includes('base.safetensors: hit for python -c (pid {c.pid})')")
        c.tell()
        c.finish()
        page.wait(f"!document.querySelector('{_row(key)} .hearth-inuse')", timeout=45, what="the holder to go")

        # Evict by hand: counted
        page.click(f"{_row(key)} .hearth-btn.is-danger")
        page.wait(f"!document.querySelector('{_row(key)}')", what="the evicted row to go")
        page.wait("document.querySelector('[data-stat=evictions] b')?.textContent === '1'", what="the count")
        assert d.status()["totals"]["evictions"] == 1

        # Settings through the one Service
        page.type('.hearth-setting[data-setting="budget"] input', "64M", enter=True)
        d.wait_for(lambda: d.ok("GET", "/v1/config")["budget"] == "64M", what="the budget")
        page.wait("document.querySelector('.hearth-activity')?.innerText.includes('settings: budget 64M')")
        page.wait("document.querySelector('.hearth-setting[data-setting=budget] small')"
                  "?.innerText.startsWith('64.0 MiB')")
        page.select('.hearth-setting[data-setting="warm_set"] select', "paused")
        d.wait_for(lambda: d.ok("GET", "/v1/config")["warm_set"] == "paused", what="the warm set")
        page.click('.hearth-setting[data-setting="autostart"] input')
        d.wait_for(lambda: login_units.state({"XDG_CONFIG_HOME": str(xdg)})["enabled"], what="start at login")
        page.wait("document.querySelector('.hearth-setting[data-setting=autostart] input').checked")
        page.click('.hearth-setting[data-setting="autostart"] input')
        d.wait_for(lambda: not login_units.state({"XDG_CONFIG_HOME": str(xdg)})["enabled"], what="no start at login")

        # The VRAM node's explanation keeps its lines
        explanation = "Hearth VRAM plan for m\nChose cpu"
        d.ok("POST", "/v1/strategy", {"strategy": "cpu", "model": "m", "explanation": explanation})
        assert page.wait("document.querySelector('.hearth-explanation')?.innerText") == explanation

        before = _stats(page)
        assert before == {"hits": 1, "misses": 0, "fills": 1, "evictions": 1}, before
        history = _activity(page)

        # The daemon restarts on the same port: the panel reconnects by itself, counters and history intact
        d.stop()
        page.wait("document.querySelector('.hearth-live')?.innerText.includes('reconnecting') || "
                  "!!document.querySelector('.hearth-state.is-down')", what="the panel to see the daemon go")
        d.start()
        page.wait("document.querySelector('.hearth-live')?.innerText === 'live'", timeout=40, what="the reconnect")
        assert d.status()["totals"] == before
        assert d.status()["stats"] == {"hits": 0, "misses": 0, "fills": 0, "evictions": 0}  # this run's own
        d.wait_for(lambda: _stats(page) == before, what="the same counters in the panel")
        assert _activity(page) == history

        # A reload keeps none of the page's memory: the history comes from the daemon
        page.goto(f"http://127.0.0.1:{d.port}/")
        page.wait("document.querySelector('.hearth-activity')?.innerText.includes('base.safetensors pinned')",
                  what="the history after a reload")
        assert _activity(page) == history
        assert _stats(page) == before
        assert page.errors == [], page.errors


# ---- where users are told the panel exists ---------------------------------------------------------

def test_hearth_status_prints_the_panel_with_its_token_and_the_log_without(daemon):
    r = daemon.cli("status")
    assert r.returncode == 0, r.stderr
    assert f"panel: http://127.0.0.1:{daemon.port}/#token={daemon.token}" in r.stdout.splitlines()[1]
    line = next(x for x in daemon.log().splitlines() if "listening on" in x)
    assert f"panel: http://127.0.0.1:{daemon.port}/ (" in line and "status" in line and "adds its token" in line
    assert daemon.token not in daemon.log()  # a log file never holds the token (SECURITY.md)


def test_a_daemon_run_in_a_terminal_shows_the_panel_with_its_token(make_daemon):
    """`hearth daemon` in a terminal: the start line is the address to click, token included."""
    import os
    import pty
    import select
    import time

    from conftest import PY

    d = make_daemon(start=False)
    d.home.mkdir(parents=True, mode=0o700)
    master, slave = pty.openpty()
    proc = subprocess.Popen([PY, "-m", "comfyui_hearth.cli", "daemon", "--headless"], env=d.env,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    d.proc = proc  # stopped and cleaned by the fixture
    seen, deadline = b"", time.monotonic() + 30
    try:
        while b"listening on" not in seen or not seen.endswith(b"\n"):
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
    finally:
        os.close(master)
    port = json.loads((d.home / "daemon.json").read_text())["port"]
    assert f"panel: http://127.0.0.1:{port}/#token={d.token}" in seen.decode()


# ---- the daemon's side of the panel ---------------------------------------------------------------

def test_model_list_names_cacheable_files_under_each_root(make_daemon, tmp_path):
    """GET /v1/models: what the standalone picker offers, relative to the root; only what a preload would take."""
    import os

    d = make_daemon()
    m = d.models
    a = make_model(m / "sd15" / "a.safetensors")
    make_model(m / "b.sft", seed=1)
    (m / "c.ckpt").write_bytes(b"a pickle: never cached, never offered")
    make_model(m / ".cache" / "hidden.safetensors", seed=2)
    outside = make_model(tmp_path / "elsewhere" / "outside.safetensors", seed=3)
    os.symlink(outside, m / "link-out.safetensors")  # leads out of the allowed folder: refused, so not offered
    os.symlink(m / "sd15", m / "again")  # a second name of a folder: walked once
    os.symlink(m, m / "sd15" / "loop")  # a loop: no hang
    d.ok("POST", "/v1/preload", {"paths": [str(a)]})
    d.wait_for(lambda: (d.segment(a) or {}).get("state") == "ready", what="the preload")

    doc = d.ok("GET", "/v1/models")
    [root] = doc["roots"]
    assert root["root"] == str(m) and doc["truncated"] is False
    files = {f["name"]: f for f in root["files"]}
    assert set(files) == {"b.sft", "sd15/a.safetensors"}, files
    assert files["sd15/a.safetensors"]["path"] == str(a) and files["sd15/a.safetensors"]["state"] == "ready"
    assert files["b.sft"]["state"] is None and files["b.sft"]["size"] == (m / "b.sft").stat().st_size
    for f in files.values():  # each one a preload takes
        assert d.ok("POST", "/v1/preload", {"paths": [f["path"]]})["refused"] == []


def test_activity_is_numbered_kept_across_restarts_and_bounded(make_daemon):
    from comfyui_hearth.daemon.activity import MAX_EVENTS

    d = make_daemon()
    p = make_model(d.models / "m.safetensors")
    d.acquire(p)
    d.acquire(p)
    d.ok("POST", "/v1/pin", {"path": str(p)})
    d.ok("POST", "/v1/pin", {"path": str(p), "pinned": False})
    d.ok("POST", "/v1/evict", {"path": str(p)})
    d.ok("POST", "/v1/config", {"budget": "1G", "model_dirs": [str(d.models)]})
    doc = d.ok("GET", "/v1/activity")
    kinds = [(e["type"], e.get("action")) for e in doc["events"]]
    assert kinds == [("cache", "filling"), ("cache", "ready"), ("cache", "acquire"), ("cache", "acquire"),
                     ("cache", "pinned"), ("cache", "unpinned"), ("cache", "evicted"), ("config", None)], kinds
    seqs = [e["seq"] for e in doc["events"]]
    assert seqs == list(range(1, 9)) and doc["seq"] == 8
    config = doc["events"][-1]
    assert config["changes"] == {"budget": "1G"} and config["changed"] == ["budget", "model_dirs"]  # no paths
    assert doc["totals"] == {"hits": 1, "misses": 1, "fills": 1, "evictions": 1}
    assert [e["seq"] for e in d.ok("GET", "/v1/activity?after=6")["events"]] == [7, 8]
    assert d.api("GET", "/v1/activity?after=x")[0] == 400

    d.stop()
    d.start()
    again = d.ok("GET", "/v1/activity")
    assert again["events"] == doc["events"] and again["totals"] == doc["totals"]
    assert d.status()["totals"] == doc["totals"] and d.status()["stats"]["fills"] == 0
    for n in range(MAX_EVENTS):
        d.ok("POST", "/v1/config", {"max_fills": 1 + n % 4})
    kept = d.ok("GET", "/v1/activity")["events"]
    assert len(kept) == MAX_EVENTS and kept[-1]["seq"] == 8 + MAX_EVENTS


def test_autostart_route(make_daemon, tmp_path):
    d = make_daemon(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert d.ok("GET", "/v1/autostart")["enabled"] is False
    status, doc = d.api("POST", "/v1/autostart", {})
    assert status == 400 and doc["error"]["code"] == "bad_request"
    assert d.api("POST", "/v1/autostart", {"enabled": "yes"})[0] == 400
    assert d.ok("POST", "/v1/autostart", {"enabled": True})["enabled"] is True
    assert (tmp_path / "xdg" / "autostart" / "comfyui-hearth.desktop").exists()
    assert d.ok("POST", "/v1/autostart", {"enabled": False})["enabled"] is False
