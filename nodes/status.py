"""How each load went, told where people look: a console line, a `hearth.load` websocket event for the panel,
and a line of text on the node that loaded (ComfyUI's progress text: hit, miss, fallback and the time).

The node's text is ComfyUI's own progress text (`PromptServer.send_progress_text(text, node_id, sid)`, in
0.3.64, 0.13 and 0.28; looked up, so a release without it only loses the text): every frontend of those
releases shows it in a text area on the node, stock nodes included, so the loaders that the stock-loader
hook serves (stock_loaders.py) show it too. It persists until the node's next text: a node ComfyUI takes
from its cache keeps the text of the load that made its output. A node that loads several files (the LoRA
Swapper, DualCLIPLoader) gets one line per file, each named. The nodes return what the stock loaders return
(no UI output): scripts that call them in-process get the same tuples.
"""

from __future__ import annotations

import html
import logging

from ..client import Loaded
from ..core.sizes import format_size

log = logging.getLogger("hearth.nodes")

EVENT = "hearth.load"
REASON_CHARS = 160  # a fallback's reason on the node; the console and the panel have it whole

# The loads of the node running now, for its text: (prompt id, node id) -> records. One node runs at a time.
_node: tuple[str | None, str | None] = (None, None)
_records: list[dict] = []


def report(node: str, node_id: str | None, kind: str, name: str, loaded: Loaded, seconds: float,
           **extra: object) -> None:
    """Log, broadcast and show on the node one load; `seconds` is the node's whole time, `loaded.seconds`
    the tensors' part.

    `extra` goes into the event as it is (the LoRA swapper says whether it reused its patches).
    The event carries the model's name, never its path: ComfyUI's server is often reachable from the LAN.
    A fallback's reason travels in the event every time; the console line leaves it to the client, which
    says why once per reason and process.
    """
    status = ("hit" if loaded.hit else "miss") if loaded.cached else "fallback"
    event = {"node": node, "node_id": node_id, "prompt_id": _prompt_id(), "kind": kind, "name": name,
             "status": status, "seconds": round(seconds, 4), "load_seconds": round(loaded.seconds, 4),
             "reason": loaded.reason, "size": loaded.size, "fill_seconds": loaded.fill_seconds, **extra}
    event["text"] = line(event)
    log.info("Hearth %s %s: %s%s, %.3f s (tensors %.3f s)", kind, name,
             {"hit": "cache hit", "miss": "cache miss", "fallback": "not cached"}[status],
             ", patches reused" if extra.get("patches_reused") else "", seconds, loaded.seconds)
    server = _server()
    if server is not None:
        server.send_sync(EVENT, event)
        _show(server, event)


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 0.1 else f"{s:.2f} s"


def line(event: dict) -> str:
    """One load in words: "hit · 0.19 s", "miss (filled 2.1 GB in 1.5 s) · 1.62 s", "not cached: why · 3.1 s"."""
    status, took = event["status"], _seconds(event["seconds"])
    if status == "hit":
        text = f"hit · {took}"
    elif status == "miss":
        filled = ""
        if event.get("size") is not None and event.get("fill_seconds") is not None:
            filled = f" (filled {format_size(event['size'])} in {_seconds(event['fill_seconds'])})"
        text = f"miss{filled} · {took}"
    else:
        reason = " ".join(str(event.get("reason") or "no reason given").split())
        if len(reason) > REASON_CHARS:
            reason = reason[:REASON_CHARS - 1] + "…"
        text = f"not cached: {reason} · {took}"
    if event.get("patches_reused"):
        text += " · patches reused"
    if event.get("eager"):
        text += f" · eager load ({event['eager']}) {_seconds(float(event.get('eager_seconds') or 0))}"
    return text


def node_text(events: list[dict]) -> str:
    """The node's text for its loads: one line, or one named line per file where it loaded several."""
    if len(events) == 1:
        return f"Hearth: {events[0]['text']}"
    return "\n".join(["Hearth:"] + [f"{e['name']}: {e['text']}" for e in events])


def nothing_loaded(node_id: str | None, why: str) -> None:
    """Say on a node that it loaded nothing this time (a LoRA stack with no row on): else it would keep
    the text of its last load."""
    server = _server()
    if server is not None:
        _send_text(server, node_id, f"Hearth: {why}")


def _show(server, event: dict) -> None:
    global _node, _records
    here = (event["prompt_id"], str(event["node_id"]))
    if here != _node:
        _node, _records = here, []
    _records.append(event)
    _send_text(server, event["node_id"], node_text(_records))


def _send_text(server, node_id: str | None, text: str) -> None:
    send = getattr(server, "send_progress_text", None)
    if node_id is None or send is None:
        return
    # The frontends put the text into the node as HTML (0.3.64's unsanitised): names are escaped.
    try:  # to the client that queued the prompt, as ComfyUI's own progress messages go
        send(html.escape(text, quote=False), str(node_id), getattr(server, "client_id", None))
    except Exception:  # the text is a courtesy; the load stands
        log.debug("Hearth: no progress text for node %s", node_id, exc_info=True)


def _prompt_id() -> str | None:
    """The running prompt's id: ComfyUI's executing context (0.3.64 and later), else the server's last one."""
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if context is not None:
            return context.prompt_id
    except ImportError:
        pass
    return getattr(_server(), "last_prompt_id", None)


def _server():
    from server import PromptServer  # ComfyUI's; absent instance when ComfyUI runs without its server

    return getattr(PromptServer, "instance", None)
