"""ComfyUI server routes under /hearth/ for the sidebar panel, and the relay of the daemon's events.

Trust model: ComfyUI's server is often reachable from the LAN, the daemon only from this machine with the
user's token. These routes hold the token on the server side (the browser never sees it), take a model's
ComfyUI folder and name (resolved through `folder_paths`, only names ComfyUI lists), never a raw path, and
answer with names instead of the absolute paths the daemon reports.

    GET  /hearth/status   the daemon's status, or {"daemon": "down", "reason"} (always 200)
    GET  /hearth/models   {"checkpoints": [...], "loras": [...]}: the cacheable files ComfyUI knows
    POST /hearth/preload  {"folder", "name"}
    POST /hearth/evict    {"folder", "name"} | {"key"} (a segment in the status) | {"all": true}
    POST /hearth/pin      {"folder", "name", "pinned": true|false}

Daemon events (websocket /v1/events) are forwarded to every browser as "hearth.cache" by a background
thread that reconnects with backoff; it never raises into ComfyUI. ComfyUI adds an /api/ twin of each route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from typing import Any, Callable

from aiohttp import web

from ..client.connection import Connection, connect
from ..core.errors import BadRequest, HearthError, NotFound
from ..core.model_files import CACHED_EXTS, is_cached_kind
from ..core.request_body import json_object

log = logging.getLogger("hearth.routes")

EVENT = "hearth.cache"
FOLDERS = ("checkpoints", "loras")
KEY_RE = re.compile(r"^[0-9a-f]{16}$")
NAMES_TTL_S = 10.0
RELAY_THREAD = "hearth-events"


# ---- names instead of paths -----------------------------------------------------------------------

class _Names:
    """Real path -> (folder, name) for the files ComfyUI lists, rebuilt at most every NAMES_TTL_S."""

    def __init__(self):
        self._lock = threading.Lock()
        self._map: dict[str, tuple[str, str]] = {}
        self._built = 0.0

    def lookup(self, path: str) -> tuple[str | None, str]:
        with self._lock:
            if time.monotonic() - self._built > NAMES_TTL_S:
                self._map = self._build()
                self._built = time.monotonic()
            found = self._map.get(path)
        return found if found else (None, os.path.basename(path))

    @staticmethod
    def _build() -> dict[str, tuple[str, str]]:
        import folder_paths

        out = {}
        for folder in FOLDERS:
            for name in folder_paths.get_filename_list(folder):
                full = folder_paths.get_full_path(folder, name)
                if full:
                    out.setdefault(os.path.realpath(full), (folder, name))
        return out


_names = _Names()


def _named(item: dict) -> dict:
    """A copy of a daemon record with its `path` replaced by the ComfyUI folder and name."""
    if not isinstance(item, dict) or "path" not in item:
        return item
    out = {k: v for k, v in item.items() if k != "path"}
    out["folder"], out["name"] = _names.lookup(str(item["path"]))
    return out


def redact_status(doc: dict) -> dict:
    """The daemon's status as the browser may see it: model names, no model paths or allowed roots."""
    out = {k: v for k, v in doc.items() if k not in ("roots", "type")}
    out["segments"] = [_named(s) for s in doc.get("segments") or []]
    return out


def redact_event(event: dict) -> dict:
    if event.get("type") == "status":
        return {"type": "status", **redact_status(event)}
    return _named(event)


def redact_answer(answer: Any) -> Any:
    """Preload/evict/pin answers: lists of records with paths, or one record."""
    if isinstance(answer, dict):
        return {k: ([_named(x) for x in v] if isinstance(v, list) else v) for k, v in _named(answer).items()}
    return answer


# ---- requests -------------------------------------------------------------------------------------

def _model(body: dict) -> tuple[str, str, str]:
    """(folder, name, full path) of a model ComfyUI lists; anything else is refused."""
    import folder_paths

    if "path" in body or "paths" in body:
        raise BadRequest("the /hearth/ routes take a model's folder and name, never a path")
    folder, name = body.get("folder"), body.get("name")
    if folder not in FOLDERS:
        raise BadRequest(f"folder must be one of {', '.join(FOLDERS)}")
    if not isinstance(name, str) or not name:
        raise BadRequest("name must be a model name as ComfyUI lists it")
    if not is_cached_kind(name):
        raise BadRequest(f"only {', '.join(CACHED_EXTS)} files are cached, not {name!r}")
    if name not in folder_paths.get_filename_list(folder):
        raise NotFound(f"ComfyUI lists no {folder} model named {name!r}")
    full = folder_paths.get_full_path(folder, name)
    if not full:
        raise NotFound(f"{folder}/{name} is no longer on disk")
    return folder, name, full


def _with_roots(conn: Connection) -> Connection:
    """Tell the daemon ComfyUI's model folders, so that the files ComfyUI names are allowed."""
    import folder_paths

    roots = sorted({os.path.realpath(p) for f in FOLDERS for p in folder_paths.get_folder_paths(f)
                    if os.path.isdir(p)})
    if roots:
        conn.post("/v1/roots", {"roots": roots})
    return conn


def _status() -> dict:
    try:
        doc = connect(timeout=5.0).get("/v1/status")
    except HearthError as e:
        return {"daemon": "down", "reason": e.message}
    relay = _relay
    if relay is not None and not relay.up:
        relay.poke()  # someone is watching and the daemon is back: reconnect now, not at the next backoff
    return {"daemon": "up", "relay": bool(relay and relay.up), **redact_status(doc)}


def _preload(body: dict) -> dict:
    _, _, path = _model(body)
    return redact_answer(_with_roots(connect()).post("/v1/preload", {"paths": [path]}))


def _evict(body: dict) -> dict:
    if body.get("all") is True:
        return redact_answer(connect().post("/v1/evict", {"all": True}))
    if "key" in body:
        key = body["key"]
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise BadRequest("key must be a segment key from /hearth/status")
        return redact_answer(connect().post("/v1/evict", {"key": key}))
    _, _, path = _model(body)
    return redact_answer(connect().post("/v1/evict", {"path": path}))


def _pin(body: dict) -> dict:
    _, _, path = _model(body)
    pinned = body.get("pinned", True)
    if not isinstance(pinned, bool):
        raise BadRequest("pinned must be true or false")
    return redact_answer(_with_roots(connect()).post("/v1/pin", {"path": path, "pinned": pinned}))


def _models() -> dict:
    import folder_paths

    return {f: [n for n in folder_paths.get_filename_list(f) if is_cached_kind(n)] for f in FOLDERS}


async def _answer(fn: Callable[..., dict], *args: Any) -> web.Response:
    """Run a blocking daemon call in the executor; typed errors become {"error": {...}} answers."""
    try:
        doc = await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except HearthError as e:
        return web.json_response(e.to_dict(), status=e.http_status)
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


def _post(fn: Callable[[dict], dict]):
    async def handler(request: web.Request) -> web.Response:
        try:
            body = await json_object(request)
        except HearthError as e:
            return web.json_response(e.to_dict(), status=e.http_status)
        return await _answer(fn, body)
    return handler


async def _get_status(request: web.Request) -> web.Response:
    return await _answer(_status)


async def _get_models(request: web.Request) -> web.Response:
    return await _answer(_models)


ROUTES = [("GET", "/hearth/status", _get_status), ("GET", "/hearth/models", _get_models),
          ("POST", "/hearth/preload", _post(_preload)), ("POST", "/hearth/evict", _post(_evict)),
          ("POST", "/hearth/pin", _post(_pin))]


# ---- the event relay ------------------------------------------------------------------------------

class Relay:
    """Forwards the daemon's websocket events to ComfyUI's browsers; reconnects with backoff, forever."""

    MIN_WAIT, MAX_WAIT = 1.0, 10.0

    def __init__(self, send: Callable[[str, dict], None]):
        self.send = send
        self.up = False  # connected to the daemon's event stream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def poke(self) -> None:
        """Cut the current backoff short (thread-safe)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._main, name=RELAY_THREAD, daemon=True)
        t.start()
        return t

    def _main(self) -> None:
        try:
            asyncio.run(self._forever())
        except BaseException:  # noqa: BLE001 - a relay that dies must not take ComfyUI with it
            log.exception("Hearth: the panel's event relay stopped")

    async def _forever(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        wait = self.MIN_WAIT
        while True:
            self._wake.clear()
            try:
                reason = await self._once()
                wait = self.MIN_WAIT  # it was connected: a daemon restart is retried quickly
            except HearthError as e:
                reason = e.message
            except Exception as e:  # noqa: BLE001 - aiohttp, OS and JSON errors alike: try again later
                reason = f"{type(e).__name__}: {e}"
            if self.up:
                self.up = False
                log.info("Hearth: lost the daemon's events (%s); retrying", reason)
                self._emit({"type": "down", "reason": reason})
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            wait = min(wait * 2, self.MAX_WAIT)

    async def _once(self) -> str:
        import aiohttp

        conn = await asyncio.to_thread(connect, 5.0)
        url = f"http://127.0.0.1:{conn.port}/v1/events"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, params={"token": conn.token}, heartbeat=30) as ws:
                log.info("Hearth: relaying the daemon's events (port %d) to the panel", conn.port)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        if event.get("type") == "status":
                            self.up = True  # the daemon's first message: from here on nothing is missed
                        self._emit(event)
                    elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                        break
        return "the daemon closed its event stream"

    def _emit(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        try:
            self.send(EVENT, redact_event(event))
        except Exception:  # noqa: BLE001 - a bad event is dropped, the relay goes on
            log.debug("Hearth: could not forward an event", exc_info=True)


# ---- registration ---------------------------------------------------------------------------------

_relay: Relay | None = None


def register(server: Any) -> bool:
    """Add the routes to ComfyUI's server and start the relay, once per process."""
    table = server.routes
    if any(getattr(r, "path", None) == "/hearth/status" for r in table):
        return False  # imported twice (under two module names): the first registration stands
    for method, path, handler in ROUTES:
        table.route(method, path)(handler)
    global _relay
    if _relay is None and not any(t.name == RELAY_THREAD for t in threading.enumerate()):
        _relay = Relay(server.send_sync)
        _relay.start()
    return True


def _register_at_import() -> None:
    try:
        from server import PromptServer  # ComfyUI's
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        log.debug("Hearth: no ComfyUI server in this process; panel routes not added")
        return
    try:
        register(instance)
    except Exception:  # noqa: BLE001 - the panel is optional; the nodes must still load
        log.exception("Hearth: could not add the panel's routes")


_register_at_import()
