"""The daemon's documents as the browser may see them: ComfyUI folder and name instead of every model path.

The daemon reports absolute paths and its allowed roots; a page served by ComfyUI to the LAN must learn
neither where the user keeps files nor what the user's account is called.
"""

from __future__ import annotations

from typing import Any

from .names import NameIndex

_index = NameIndex()


def _named(item: Any) -> Any:
    """A copy of a daemon record with its `path` replaced by the ComfyUI folder and name."""
    if not isinstance(item, dict) or "path" not in item:
        return item
    out = {k: v for k, v in item.items() if k != "path"}
    out["folder"], out["name"] = _index.lookup(str(item["path"]))
    return out


def redact_status(doc: dict) -> dict:
    """The daemon's status: model names, no model paths or allowed roots."""
    out = {k: v for k, v in doc.items() if k not in ("roots", "type")}
    out["segments"] = [_named(s) for s in doc.get("segments") or []]
    return out


def redact_event(event: dict) -> dict:
    """One event of the daemon's websocket (its first one is a whole status)."""
    if event.get("type") == "status":
        return {"type": "status", **redact_status(event)}
    return _named(event)


def redact_answer(answer: Any) -> Any:
    """Preload/evict/pin answers: lists of records with paths, or one record."""
    if isinstance(answer, dict):
        return {k: ([_named(x) for x in v] if isinstance(v, list) else v) for k, v in _named(answer).items()}
    return answer
