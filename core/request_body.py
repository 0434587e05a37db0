"""The JSON object body of an aiohttp request: the daemon's API and the panel's routes in ComfyUI read it alike."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .errors import BadRequest

if TYPE_CHECKING:
    from aiohttp import web


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


async def json_object(request: web.Request) -> dict:
    """The body parsed as a JSON object; BadRequest when it cannot be read, is not JSON, or JSON of another kind.

    Read as bytes and decoded as UTF-8 (the only encoding of JSON between systems, RFC 8259), whatever
    charset the Content-Type names: aiohttp's `request.json()` decodes with that charset and raised
    LookupError for an unknown one. NaN and Infinity, which Python's parser takes, are refused as the JSON
    they are not; so is nesting deeper than the parser's recursion limit.
    """
    from aiohttp import web

    try:
        raw = await request.read()
    except web.RequestPayloadError as e:  # a body that does not match its Content-Encoding, a broken chunk
        raise BadRequest(f"request body could not be read: {str(e).splitlines()[-1].strip()}") from None
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_not_json)
    except (ValueError, RecursionError):  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        raise BadRequest("request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body
