"""The pack's routes in ComfyUI's server (/hearth/, for the sidebar panel) and the relay of the daemon's events.

Trust model. The user is trusted, and so is every page ComfyUI itself serves to the user's browser. Not
trusted: other machines on the LAN that reach ComfyUI's server (it is often started with --listen), and web
pages of other origins open in the user's browser, which can send requests to ComfyUI (a cross-origin
"simple" POST goes out without a preflight) even where they cannot read the answers.

Doors (tests/comfy/test_panel_routes.py tries each against a real ComfyUI):
- The daemon's token stays in ComfyUI's process: the routes call the daemon on loopback with it and the
  browser never sees it, so nothing that reaches ComfyUI can talk to the daemon itself.
- Names, never paths (names.py): a request names a model by ComfyUI folder and name, resolved through
  folder_paths; only names ComfyUI lists and only cacheable files; a path in a request is refused. A machine
  on the LAN can preload, pin or evict only the models ComfyUI offers it for its workflows anyway.
- Settings: a page may change the daemon's sizes and switches (budget, warm set, prefetch, eager load) and
  start at login, as it can change any ComfyUI setting; never the allowed folders or the pinned paths.
- Answers and relayed events carry names, never model paths nor the daemon's allowed roots (redact.py).
- Pages of another origin are refused (guard.py): the Origin must match the Host the request addressed,
  else Sec-Fetch-Site must be same-origin (or none); POST bodies only as application/json. GETs are checked
  too, so no page reads the model names whatever CORS headers ComfyUI adds (--enable-cors-header adds them
  to every answer and replaces ComfyUI's own Origin check, which only ever covered a loopback Host).
Not covered: DNS rebinding (a page at a host name its owner points at the ComfyUI machine is same-origin by
the browser's rules), to which ComfyUI's own API (/prompt) is as open; and ComfyUI's websocket, which carries
the relayed events (names only) and is ComfyUI's door.

    GET  /hearth/status   the daemon's status, or {"daemon": "down", "reason"} (always 200)
    GET  /hearth/models   {"checkpoints": [...], "loras": [...]}: the cacheable files ComfyUI knows
    POST /hearth/preload  {"folder", "name"}
    POST /hearth/evict    {"folder", "name"} | {"key"} (a segment in the status) | {"all": true}
    POST /hearth/pin      {"folder", "name", "pinned": true|false}
    GET  /hearth/activity {"stats", "since", "seq", "events"}: the daemon's counters and kept events
    GET  /hearth/settings {"daemon": {budget, warm_set, ...}, "autostart": {"enabled"}, "stock_loaders"}
    POST /hearth/settings {"budget": "12G", "warm_set": "paused", ..., "autostart": bool}: only the sizes
                          and switches of handlers.SETTABLE; Hearth.StockLoaders is ComfyUI's own setting,
                          which the page writes through ComfyUI's POST /settings/Hearth.StockLoaders

ComfyUI adds an /api/ twin of each route. The pack's entry (nodes/__init__.py) calls `register` with
ComfyUI's PromptServer; importing this package adds nothing.
"""

from __future__ import annotations

from typing import Any

from .handlers import Handler, activity, change_settings, evict, get, pin, post, preload, settings, status
from .names import listed
from .relay import Relay

__all__ = ["register", "route_table"]

STATUS_PATH = "/hearth/status"


def route_table(relay: Relay) -> list[tuple[str, str, Handler]]:
    """(method, path, handler) of every /hearth/ route; the status reports and pokes `relay`."""
    return [("GET", STATUS_PATH, get(lambda: status(relay))),
            ("GET", "/hearth/models", get(listed)),
            ("POST", "/hearth/preload", post(preload)),
            ("POST", "/hearth/evict", post(evict)),
            ("POST", "/hearth/pin", post(pin)),
            ("GET", "/hearth/activity", get(activity)),
            ("GET", "/hearth/settings", get(settings)),
            ("POST", "/hearth/settings", post(change_settings))]


def register(server: Any) -> bool:
    """Add the routes to ComfyUI's `server` (a PromptServer) and start the relay; False if already there.

    ComfyUI can import the pack twice under two module names (two folders of it in custom_nodes/, or
    `comfyui_hearth` imported by name as well), each with its own module state: the test is on the server's
    route table, where a second set of the same routes would make aiohttp refuse to start.
    """
    table = server.routes
    if any(getattr(r, "path", None) == STATUS_PATH for r in table):
        return False
    relay = Relay(server.send_sync)
    for method, path, handler in route_table(relay):
        table.route(method, path)(handler)
    relay.start()
    return True
