"""The pack keeps the user's daemon while ComfyUI's server runs (client/lifecycle.py does the work).

At load, on a thread of its own (ComfyUI's start never waits for it, and nothing it does can raise into
ComfyUI), it checks that the daemon runs: it reuses one that is up, else starts one detached, or replaces
one older than the pack when that one is idle. A load that later finds the daemon gone starts it again.
Only in a process with ComfyUI's server: ComfyUI used as a library (a script, a test's child) starts nothing.

Opt-out in ComfyUI: the setting Hearth.StartDaemon (web/hearth.js registers it; the frontend stores it in
the default user's comfy.settings.json, read here at every decision, so turning it off applies at once).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..client import lifecycle
from ..core.jsonfile import read_json
from .stock_setting import settings_path

SETTING_ID = "Hearth.StartDaemon"
THREAD_NAME = "hearth-daemon-check"


def setting_veto() -> str | None:
    """Why ComfyUI's settings forbid starting the daemon (Hearth.StartDaemon off), or None."""
    doc = read_json(Path(settings_path()), {})
    if isinstance(doc, dict) and doc.get(SETTING_ID) is False:
        return f"ComfyUI's setting {SETTING_ID} is off"
    return None


def start() -> threading.Thread:
    """Keep the daemon from now on and check it now, in the background."""
    lifecycle.keep(setting_veto)
    thread = threading.Thread(target=lifecycle.ensure, name=THREAD_NAME, daemon=True)
    thread.start()
    return thread


def panel_state() -> dict[str, Any]:
    """What the pack did about the daemon, for /hearth/status: state and reason (no paths beyond the pack's)."""
    s = lifecycle.state()
    return {"state": s["state"], "reason": s.get("reason")}
