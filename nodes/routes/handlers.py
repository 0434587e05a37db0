"""The /hearth/ request handlers: the browser's doors, then the daemon call in an executor, then redaction.

Every daemon call blocks (the client's connection is synchronous), so it runs in ComfyUI's default executor
and never stalls the server's event loop. Typed errors become {"error": {"code", "message"}} answers.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...client.connection import Connection, connect
from ...core.command import hint
from ...core.errors import BadRequest, HearthError
from ...core.request_body import json_object
from .. import stock_setting
from ..lifecycle import panel_state
from .guard import check_json, check_origin
from .names import model_path, model_roots
from .redact import redact_answer, redact_status

if TYPE_CHECKING:
    from .relay import Relay

Handler = Callable[[web.Request], Awaitable[web.Response]]

KEY_RE = re.compile(r"^[0-9a-f]{16}$")
# The daemon settings a page of ComfyUI may change: sizes and switches, never a path list (model_dirs,
# pinned), which would let a machine of the LAN allow folders or learn where the user keeps files.
SETTABLE = ("budget", "warm_set", "warm_set_size", "prefetch", "eager_load")


# ---- what each route does (blocking; run in the executor) -----------------------------------------

def _with_roots(conn: Connection) -> Connection:
    """Tell the daemon ComfyUI's model folders, so that the files ComfyUI names are allowed."""
    roots = model_roots()
    if roots:
        conn.post("/v1/roots", {"roots": roots})
    return conn


def status(relay: Relay) -> dict:
    """The daemon's status, or {"daemon": "down", "reason", "hint"}: the panel shows either; both say what the
    pack did about the daemon ("start": state and reason: a failed start, an outdated daemon left running)."""
    start = panel_state()
    try:
        doc = connect(timeout=5.0).get("/v1/status")
    except HearthError as e:
        # What the pack did about it says more than "not running"
        reason = {"failed": start["reason"], "outdated": start["reason"], "incompatible": start["reason"],
                  "off": f"{e.message}; {start['reason']}"}.get(start["state"]) or e.message
        return {"daemon": "down", "reason": reason, "start": start, "hint": hint("start")}
    if not relay.up:
        relay.poke()  # someone is watching and the daemon is back: reconnect now, not at the next backoff
    # ComfyUI's pid and clock: the panel folds the daemon's acquire for this process into the node's own load
    # report, which the browser dates on arrival (web/lib/activity.js)
    return {"daemon": "up", "relay": relay.up, "start": start, "comfy_pid": os.getpid(), "now": time.time(),
            **redact_status(doc)}


def activity() -> dict:
    """The daemon's counters and kept events (names, not paths), for the panel's history after a reload."""
    return redact_answer(connect(timeout=5.0).get("/v1/activity"))


def settings() -> dict:
    """What the panel's settings show: the daemon's settings a page may change, start at login, and
    Hearth.StockLoaders as this ComfyUI decides it (where from: env, settings or default)."""
    conn = connect(timeout=5.0)
    values = conn.get("/v1/config")
    on, source = stock_setting.state()
    return {"daemon": {k: values[k] for k in (*SETTABLE, "budget_bytes") if k in values},
            "autostart": {"enabled": bool(conn.get("/v1/autostart").get("enabled"))},
            "stock_loaders": {"enabled": on, "source": source, "setting": stock_setting.SETTING_ID,
                              "env": stock_setting.ENV}}


def change_settings(body: dict) -> dict:
    """Change daemon settings ({"budget": "12G", ...}) and start at login ({"autostart": bool}) in one request."""
    unknown = sorted(set(body) - {*SETTABLE, "autostart"})
    if unknown:
        raise BadRequest(f"these settings cannot be changed from here: {', '.join(unknown)} "
                         f"(the panel changes {', '.join(SETTABLE)} and autostart)")
    conn = connect()
    changes = {k: body[k] for k in SETTABLE if k in body}
    if changes:
        conn.post("/v1/config", changes)
    if "autostart" in body:
        if not isinstance(body["autostart"], bool):
            raise BadRequest("autostart must be true or false")
        conn.post("/v1/autostart", {"enabled": body["autostart"]})
    return settings()


def preload(body: dict) -> dict:
    path = model_path(body)
    return redact_answer(_with_roots(connect()).post("/v1/preload", {"paths": [path]}))


def evict(body: dict) -> dict:
    if body.get("all") is True:
        return redact_answer(connect().post("/v1/evict", {"all": True}))
    if "key" in body:
        key = body["key"]
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise BadRequest("key must be a segment key from /hearth/status")
        return redact_answer(connect().post("/v1/evict", {"key": key}))
    return redact_answer(connect().post("/v1/evict", {"path": model_path(body)}))


def pin(body: dict) -> dict:
    path = model_path(body)
    pinned = body.get("pinned", True)
    if not isinstance(pinned, bool):
        raise BadRequest("pinned must be true or false")
    return redact_answer(_with_roots(connect()).post("/v1/pin", {"path": path, "pinned": pinned}))


# ---- aiohttp handlers -----------------------------------------------------------------------------

def _error(e: HearthError) -> web.Response:
    return web.json_response(e.to_dict(), status=e.http_status)


async def _answer(fn: Callable[..., dict], *args: Any) -> web.Response:
    try:
        doc = await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except HearthError as e:
        return _error(e)
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


def get(fn: Callable[[], dict]) -> Handler:
    """A GET handler answering fn()'s document to pages of this ComfyUI only."""
    async def handler(request: web.Request) -> web.Response:
        try:
            check_origin(request)
        except HearthError as e:
            return _error(e)
        return await _answer(fn)
    return handler


def post(fn: Callable[[dict], dict]) -> Handler:
    """A POST handler: fn(the JSON object body), for pages of this ComfyUI only."""
    async def handler(request: web.Request) -> web.Response:
        try:
            check_origin(request)
            check_json(request)
            body = await json_object(request)
        except HearthError as e:
            return _error(e)
        return await _answer(fn, body)
    return handler
