"""The daemon's user settings (config.json in HEARTH_HOME), with validation of every key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.errors import BadRequest
from ..core.jsonfile import read_json, write_json_atomic
from ..core.sizes import parse_size
from ..core.switch import OFF_WORDS, ON_WORDS

DEFAULTS: dict[str, Any] = {
    "budget": "auto",       # '12G', '40%' of RAM, bytes, or 'auto' (DESIGN section 5)
    "model_dirs": [],       # extra allowed roots, beside HEARTH_MODEL_DIRS and ComfyUI's folders
    "pinned": [],           # source paths never evicted by LRU, refilled when the daemon starts
    "max_fills": 2,         # concurrent fills of different files
    "start_with_comfyui": True,  # the pack in ComfyUI starts the daemon, or replaces an older one (client/lifecycle.py)
    "warm_set": "on",       # refill the recently used models when the daemon starts: on, paused or off
    "warm_set_size": "auto",  # how much that refill brings back: a size as the budget's ('auto': the budget)
    "eager_load": False,    # Hearth's loaders make the weights resident at load time (not at the first step)
    "prefetch": True,       # a queued prompt's models are filled while it waits (nodes/prefetch.py)
}

WARM_SET_MODES = ("on", "paused", "off")


def _check(key: str, value: Any) -> Any:
    if key in ("budget", "warm_set_size"):
        if value not in ("auto", None):
            parse_size(value, total=1)  # raises ValueError with a readable message
        return value or "auto"
    if key in ("model_dirs", "pinned"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of paths")
        return [os.path.realpath(os.path.expanduser(v)) for v in value]
    if key == "max_fills":
        try:
            value = int(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: 1e999 reads as an infinite float
            value = 0
        if not 1 <= value <= 16:
            raise ValueError("max_fills must be a whole number between 1 and 16")
        return value
    if key in ("eager_load", "start_with_comfyui", "prefetch"):
        if isinstance(value, str):
            value = value.lower() in ON_WORDS
        return bool(value)
    if key == "warm_set":
        if isinstance(value, bool):  # `true`/`false` in config.json or a request mean on and off
            return "on" if value else "off"
        word = str(value).strip().lower()
        aliases = {"pause": "paused", "resume": "on", **dict.fromkeys(ON_WORDS, "on"),
                   **dict.fromkeys(OFF_WORDS, "off")}
        word = aliases.get(word, word)
        if word not in WARM_SET_MODES:
            raise ValueError(f"warm_set must be one of {', '.join(WARM_SET_MODES)}")
        return word
    if key == "autostart":  # the login units are their own state (core/login_units.py), not a setting
        raise ValueError("start at login is `hearth autostart on|off` (or the panel's toggle), not a setting")
    raise ValueError(f"unknown setting {key!r} (known: {', '.join(DEFAULTS)})")


class Settings:
    """config.json, read once and written atomically on every change.

    `sources` says where each value in effect comes from ("default", "config.json" or the environment
    variable that overrides it), so `hearth config` and the panel can show it.
    """

    def __init__(self, path: Path):
        self.path = path
        stored = read_json(path, {}) or {}
        self.values = dict(DEFAULTS)
        self.sources = dict.fromkeys(DEFAULTS, "default")
        for k, v in stored.items():
            try:
                self.values[k] = _check(k, v)
                self.sources[k] = "config.json"
            except (ValueError, TypeError):
                pass  # a hand-edited bad value falls back to the default rather than stopping the daemon
        if budget_env := os.environ.get("HEARTH_BUDGET"):
            try:
                self.values["budget"] = _check("budget", budget_env)
                self.sources["budget"] = "HEARTH_BUDGET"
            except ValueError as e:  # the user's explicit setting: refuse to start, saying which one
                raise BadRequest(f"HEARTH_BUDGET: {e}") from None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply several settings at once; nothing is applied if one is bad."""
        try:
            checked = {k: _check(k, v) for k, v in changes.items()}
        except (ValueError, TypeError) as e:
            raise BadRequest(str(e)) from None
        self.values.update(checked)
        self.sources.update(dict.fromkeys(checked, "config.json"))
        write_json_atomic(self.path, self.values)
        return dict(self.values)
