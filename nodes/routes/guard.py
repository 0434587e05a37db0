"""The browser's doors: requests that a web page of another origin can make, refused before any handler runs.

A browser sends a cross-origin "simple" POST (text/plain or form body) without asking the server first, and
ComfyUI's own Origin check runs only where the request addressed a loopback Host (all supported releases;
0.28 also refuses `Sec-Fetch-Site: cross-site`): a ComfyUI reached over the LAN takes such requests from any
page open in the user's browser. So every /hearth/ request is checked here, whatever ComfyUI checks:
- an Origin (browsers send one with every POST and every cross-origin fetch) must name the host the request
  addressed: the same host name, and the same port where the Host header names one (a reverse proxy in
  front of ComfyUI commonly forwards the host without its port);
- without an Origin, a Sec-Fetch-Site (current browsers send it with every request) must be `same-origin`
  or `none` (an address the user typed);
- a POST's body must be declared application/json, which no page can send to another origin without a
  CORS preflight, and a page would still fail the Origin check.
A request with neither header comes from a program, not a page: a program that reaches ComfyUI can queue
any workflow, so the routes' names-not-paths rule (names.py) is its door.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from ...core.errors import BadRequest, NotAllowed

if TYPE_CHECKING:
    from aiohttp import web

DEFAULT_PORTS = {"http": 80, "https": 443}
SITES_OF_OUR_PAGES = ("same-origin", "none")


def same_origin(origin: str, host: str) -> bool:
    """Whether `origin` (a browser's Origin header) is the origin of a page served at `host` (a Host header)."""
    try:
        page = urllib.parse.urlsplit(origin)
        addressed = urllib.parse.urlsplit("//" + host)
        page_port, host_port = page.port, addressed.port
    except ValueError:  # a port that is not a number, a malformed IPv6 literal
        return False
    if page.scheme not in DEFAULT_PORTS or not page.hostname or page.path or page.query:
        return False  # "null" (sandboxed frames, file: pages) and anything that is no origin at all
    if page.hostname != addressed.hostname:
        return False
    return host_port is None or (page_port or DEFAULT_PORTS[page.scheme]) == host_port


def check_origin(request: web.Request) -> None:
    """Refuse (NotAllowed) a request made by a page that ComfyUI did not serve."""
    origin, host = request.headers.get("Origin"), request.headers.get("Host", "")
    if origin is not None:
        if not same_origin(origin, host):
            raise NotAllowed(f"refused a request of the page at {origin} to the ComfyUI at {host}: Hearth's "
                             f"routes answer only pages of the ComfyUI they belong to")
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() not in SITES_OF_OUR_PAGES:
        raise NotAllowed(f"refused a request of a page on another origin (Sec-Fetch-Site: {site}) to the "
                         f"ComfyUI at {host}: Hearth's routes answer only pages of the ComfyUI they belong to")


def check_json(request: web.Request) -> None:
    """Refuse (BadRequest) a body that is not declared as JSON: the type of a form or a text/plain post."""
    if request.content_type != "application/json":
        given = request.headers.get("Content-Type", "none")
        raise BadRequest(f"the request body must be sent as application/json, not {given}")
