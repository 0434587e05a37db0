"""How each load went, told twice: one console line and a `hearth.load` websocket event for the panel."""

from __future__ import annotations

import logging

from ..client import Loaded

log = logging.getLogger("hearth.nodes")

EVENT = "hearth.load"


def report(node: str, node_id: str | None, kind: str, name: str, loaded: Loaded, seconds: float,
           **extra: object) -> None:
    """Log and broadcast one load; `seconds` is the node's whole time, `loaded.seconds` the tensors' part.

    `extra` goes into the event as it is (the LoRA swapper says whether it reused its patches).
    The event carries the model's name, never its path: ComfyUI's server is often reachable from the LAN.
    A fallback's reason travels in the event every time; the console line leaves it to the client, which
    says why once per reason and process.
    """
    status = ("hit" if loaded.hit else "miss") if loaded.cached else "fallback"
    event = {"node": node, "node_id": node_id, "kind": kind, "name": name, "status": status,
             "seconds": round(seconds, 4), "load_seconds": round(loaded.seconds, 4), "reason": loaded.reason,
             **extra}
    log.info("Hearth %s %s: %s%s, %.3f s (tensors %.3f s)", kind, name,
             {"hit": "cache hit", "miss": "cache miss", "fallback": "not cached"}[status],
             ", patches reused" if extra.get("patches_reused") else "", seconds, loaded.seconds)
    _send(event)


def _send(event: dict) -> None:
    from server import PromptServer  # ComfyUI's; absent instance when ComfyUI runs without its server

    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync(EVENT, event)
