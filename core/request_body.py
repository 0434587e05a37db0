"""The JSON object body of an aiohttp request: the daemon's API and the panel's routes in ComfyUI read it alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import BadRequest

if TYPE_CHECKING:
    from aiohttp import web


async def json_object(request: web.Request) -> dict:
    """The body parsed as a JSON object; BadRequest when it is not JSON, or JSON of another kind."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
        raise BadRequest("request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body
