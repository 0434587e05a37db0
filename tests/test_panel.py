"""The standalone web panel: served by a real daemon without a token, shown in a real headless Chromium.

The page and its static files are public; every API route still needs the token. The browser test opens
the page with the token in the URL fragment, as the tray does, and reads the rendered DOM.
"""

from __future__ import annotations

import http.client
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
    row = re.search(rf'<div class="hearth-tr" role="row" data-key="{queued["key"]}" data-state="ready">(.*?)</div>',
                    dom, re.S)
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
