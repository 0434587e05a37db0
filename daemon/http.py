"""The daemon's HTTP face: /v1 JSON routes and the events websocket over the one Service.

Loopback only; every request but /v1/health and the panel's static files carries the per-user token;
requests for another Host are refused (DNS rebinding), and so are requests a page of another origin makes
(its Origin header is not the daemon's own); bodies over 1 MB are refused. SECURITY.md says why each door.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import weakref
from pathlib import Path

from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Handler

from ..core.errors import BadRequest, HearthError, NotAllowed, NotFound, Unauthorized
from ..core.request_body import json_object
from ..core.version import PROTOCOL, __version__
from .service import Service

log = logging.getLogger("hearth.http")

MAX_BODY = 1 << 20
CLOSE_WAIT_S = 0.5  # how long a stop waits for websocket clients to answer its close
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PUBLIC = {"/v1/health", "/", "/favicon.ico"}

SERVICE = web.AppKey("service", Service)
TOKEN = web.AppKey("token", str)
# the open events websockets, closed at a stop
SOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("sockets", weakref.WeakSet)


def _error(err: HearthError) -> web.Response:
    return web.json_response(err.to_dict(), status=err.http_status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    port = request.transport.get_extra_info("sockname")[1] if request.transport else None
    if request.host not in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        return _error(Unauthorized(f"requests must address the daemon by loopback, not {request.host!r}"))
    # Browsers send Origin with every websocket handshake, every POST and every cross-origin fetch. Only the
    # daemon's own panel (same scheme, host and port as the Host checked above) may use or read the daemon:
    # a websocket is not held to CORS, so without this a page that learnt the token could watch the cache.
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() != f"http://{request.host}".lower():
        return _error(NotAllowed(f"refused a request of the page at {origin[:100]!r}: the daemon answers only "
                                 f"its own panel (http://{request.host}/)"))
    public = request.path in PUBLIC or request.path.startswith("/panel/")
    if not public:
        if request.path == "/v1/events":
            given = request.query.get("token", "")
        else:
            auth = request.headers.get("Authorization", "")
            given = auth[7:] if auth.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), app[TOKEN].encode()):
            return _error(Unauthorized("missing or wrong token (it is in the token file of HEARTH_HOME)"))
    try:
        return await handler(request)
    except HearthError as e:
        return _error(e)
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(BadRequest(f"request body over {MAX_BODY} bytes").to_dict(), status=413)
    except web.HTTPNotFound:
        return _error(NotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed:
        return web.json_response(BadRequest(f"{request.method} is not allowed on {request.path}").to_dict(),
                                 status=405)
    except web.HTTPException:
        raise  # aiohttp's own answers (websocket upgrade refusals, the panel's files)
    except Exception:  # every error of the API is JSON, a bug included; the daemon goes on
        log.exception("internal error in %s %s", request.method, request.path)
        return _error(HearthError(f"internal error in {request.method} {request.path}; see the daemon's log"))


async def _body(request: web.Request) -> dict:
    return await json_object(request) if request.can_read_body else {}


def _pid(body: dict) -> int | None:
    pid = body.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "version": __version__, "protocol": PROTOCOL, "pid": os.getpid()})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].status())


async def acquire(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(await request.app[SERVICE].acquire(body.get("path"), _pid(body)))


async def release(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(request.app[SERVICE].release(body.get("key"), _pid(body)))


async def preload(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(await request.app[SERVICE].preload(body.get("paths")))


async def hold(request: web.Request) -> web.Response:
    """POST {"hold": prompt id, "paths": [...], "seconds": lifetime, "pid"}: what a queued prompt names is
    kept and prefetched; "paths": [] drops the hold (holds.py)."""
    body = await _body(request)
    return web.json_response(await request.app[SERVICE].hold(body.get("hold"), body.get("paths"), _pid(body),
                                                             body.get("seconds")))


async def evict(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(request.app[SERVICE].evict(body.get("path"), all=body.get("all") is True,
                                                       key=body.get("key")))


async def pin(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(await request.app[SERVICE].pin(body.get("path"), body.get("pinned", True) is True))


async def config(request: web.Request) -> web.Response:
    changes = await _body(request) if request.method == "POST" else None
    return web.json_response(request.app[SERVICE].config(changes))


async def activity(request: web.Request) -> web.Response:
    """GET [?after=SEQ]: the counters and the kept events (activity.py), those numbered above SEQ only."""
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise BadRequest("after must be an event's sequence number") from None
    return web.json_response(request.app[SERVICE].activity.document(after))


async def models(request: web.Request) -> web.Response:
    """GET: the cacheable files under the allowed roots, for the standalone panel's picker (catalog.py)."""
    return web.json_response(await request.app[SERVICE].models())


async def autostart(request: web.Request) -> web.Response:
    """GET: whether the daemon starts at login; POST {"enabled": bool}: turn it on or off."""
    enabled = (await _body(request)).get("enabled") if request.method == "POST" else None
    if request.method == "POST" and enabled is None:
        raise BadRequest('send {"enabled": true} or {"enabled": false}')
    return web.json_response(await request.app[SERVICE].autostart(enabled))


async def strategy(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    if request.method == "POST":
        return web.json_response(svc.set_strategy(await _body(request)))
    return web.json_response(svc.strategy or {})


async def roots(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    if request.method == "POST":
        return web.json_response(svc.add_roots((await _body(request)).get("roots")))
    return web.json_response({"roots": svc.roots()})


async def shutdown(request: web.Request) -> web.Response:
    """POST {"unless_busy": bool}: stop the daemon (after this answer); Busy while in use, when asked so."""
    body = await _body(request)
    return web.json_response(request.app[SERVICE].shutdown(unless_busy=body.get("unless_busy") is True))


async def events(request: web.Request) -> web.WebSocketResponse:
    svc = request.app[SERVICE]
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    queue = svc.subscribe()

    async def pump() -> None:
        await ws.send_json({"type": "status", **svc.status()})
        while True:
            await ws.send_json(await queue.get())

    sender = asyncio.ensure_future(pump())
    try:
        async for _msg in ws:  # viewers send nothing; the loop ends when the socket closes
            pass
    finally:
        sender.cancel()
        svc.unsubscribe(queue)
    return ws


async def panel(request: web.Request) -> web.StreamResponse:
    page = WEB_DIR / "panel.html"
    if not page.exists():
        raise web.HTTPNotFound()
    return web.FileResponse(page, headers={"Cache-Control": "no-store"})


async def _close_sockets(app: web.Application) -> None:
    """At a stop: aiohttp would wait for every open websocket (ComfyUI's event relay keeps one) to end.

    A close waits for the peer's answer (10 s by default); one that never answers is cut after
    CLOSE_WAIT_S by the server's shutdown, which cancels its handler."""
    sockets = app[SOCKETS]
    closing = [ws.close(code=WSCloseCode.GOING_AWAY, message=b"the daemon is stopping") for ws in list(sockets)]
    if closing:
        try:
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), CLOSE_WAIT_S)
        except asyncio.TimeoutError:
            log.info("a websocket client did not answer the close; cut")


def make_app(service: Service, token: str) -> web.Application:
    """The aiohttp application for one Service, guarded by `token`."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[SERVICE] = service
    app[TOKEN] = token
    app[SOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(_close_sockets)
    r = app.router
    r.add_get("/v1/health", health)
    r.add_get("/v1/status", status)
    r.add_post("/v1/acquire", acquire)
    r.add_post("/v1/release", release)
    r.add_post("/v1/preload", preload)
    r.add_post("/v1/hold", hold)
    r.add_post("/v1/evict", evict)
    r.add_post("/v1/pin", pin)
    r.add_route("GET", "/v1/config", config)
    r.add_route("POST", "/v1/config", config)
    r.add_get("/v1/activity", activity)
    r.add_get("/v1/models", models)
    r.add_route("GET", "/v1/autostart", autostart)
    r.add_route("POST", "/v1/autostart", autostart)
    r.add_route("GET", "/v1/strategy", strategy)
    r.add_route("POST", "/v1/strategy", strategy)
    r.add_route("GET", "/v1/roots", roots)
    r.add_route("POST", "/v1/roots", roots)
    r.add_post("/v1/shutdown", shutdown)
    r.add_get("/v1/events", events)
    r.add_get("/", panel)
    if WEB_DIR.is_dir():
        r.add_static("/panel/", WEB_DIR)
    return app
