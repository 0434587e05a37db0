"""The setting "Hearth.StockLoaders": whether ComfyUI's own loader nodes read through Hearth (stock_loaders.py).

A per-ComfyUI-process decision, so it lives with ComfyUI, not in the daemon's config.json:
1. `HEARTH_STOCK_LOADERS=1` or `=0` in ComfyUI's environment decides when set (a launcher or a server
   operator's choice wins over the browser's);
2. else the frontend setting `Hearth.StockLoaders` (true/false) in the settings file ComfyUI keeps for
   its single user, `<user directory>/default/comfy.settings.json` (what ComfyUI's settings dialog and
   POST /settings write; with --multi-user, the default user's file decides for the process);
3. else DEFAULT.
Read at every load, so a change in the settings dialog applies to the next load without a restart; the file
is parsed again only when its size or mtime changed. DEFAULT and its reason are in the README.
"""

from __future__ import annotations

import json
import logging
import os

import folder_paths

log = logging.getLogger("hearth.nodes")

SETTING_ID = "Hearth.StockLoaders"
ENV = "HEARTH_STOCK_LOADERS"
DEFAULT = True
SETTINGS_FILE = ("default", "comfy.settings.json")  # under folder_paths.get_user_directory()

_TRUE, _FALSE = {"1", "true", "on", "yes"}, {"0", "false", "off", "no"}
_read: dict[str, tuple[tuple, object]] = {}  # path -> ((size, mtime_ns), the setting's value or None)
_said: set[str] = set()


def settings_path() -> str:
    return os.path.join(folder_paths.get_user_directory(), *SETTINGS_FILE)


def _from_file(path: str) -> object:
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_size, st.st_mtime_ns)
    kept = _read.get(path)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get(SETTING_ID)
    except (OSError, ValueError, AttributeError):
        value = None  # ComfyUI itself treats a corrupt settings file as empty
    _read.clear()
    _read[path] = (stamp, value)
    return value


def state() -> tuple[bool, str]:
    """(on, where the decision came from: "env", "settings" or "default")."""
    env = os.environ.get(ENV)
    if env is not None:
        word = env.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE, "env"
        if env not in _said:
            _said.add(env)
            log.warning("Hearth: %s=%r is neither 0 nor 1; ignored", ENV, env)
    value = _from_file(settings_path())
    if isinstance(value, bool):
        return value, "settings"
    return DEFAULT, "default"


def enabled() -> bool:
    """Whether the stock loaders read through Hearth for the load about to happen."""
    return state()[0]
