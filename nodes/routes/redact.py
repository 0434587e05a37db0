"""The daemon's documents as the browser may see them: ComfyUI folder and name instead of every model path.

The daemon reports absolute paths and its allowed roots; a page served by ComfyUI to the LAN must learn
neither where the user keeps files nor what the user's account is called. Redaction walks the whole
document, so a part the daemon adds later (fills, failures, the warm set, holds, the activity history) is
covered without a rule of its own: every record with a `path` gets the folder and name instead (and its
messages the name where they quoted the path), a `paths` list becomes `names`, and lists of folders
(`roots`, `model_dirs`, a `pinned` list) are left out.
"""

from __future__ import annotations

from typing import Any

from .names import NameIndex

_index = NameIndex()
DROPPED_LISTS = ("roots", "model_dirs", "pinned")


def _name_of(path: str) -> tuple[str | None, str]:
    return _index.lookup(path)


def _scrub(value: Any, path: str | None = None, shown: str = "") -> Any:
    """`value` with every path replaced; `path` (the enclosing record's) is replaced by `shown` in text."""
    if isinstance(value, str):
        return value.replace(path, shown) if path and path in value else value
    if isinstance(value, list):
        return [_scrub(v, path, shown) for v in value]
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("path"), str):
        path = value["path"]
        folder, name = _name_of(path)
        shown = f"{folder}/{name}" if folder else name
        out = {k: _scrub(v, path, shown) for k, v in value.items() if k != "path"}
        out["folder"], out["name"] = folder, name
        return out
    out = {}
    for k, v in value.items():
        if k in DROPPED_LISTS and isinstance(v, list):
            continue
        if k == "paths" and isinstance(v, list):
            out["names"] = [_name_of(p)[1] if isinstance(p, str) else p for p in v]
            continue
        out[k] = _scrub(v, path, shown)
    return out


def redact_status(doc: dict) -> dict:
    """The daemon's status: model names, no model paths or allowed roots."""
    return _scrub({k: v for k, v in doc.items() if k != "type"})


def redact_event(event: dict) -> dict:
    """One event of the daemon's websocket (its first one is a whole status)."""
    return _scrub(event)


def redact_answer(answer: Any) -> Any:
    """Preload/evict/pin/activity answers: records with paths, lists of them, or other documents."""
    return _scrub(answer)
