"""Typed errors with stable codes, shared by the daemon, the client and the CLI."""

from __future__ import annotations

_BY_CODE: dict[str, type[HearthError]] = {}


class HearthError(Exception):
    """Base error: `code` is a stable string that the API, the CLI and the client all use.

    Every subclass is registered by its code when it is defined, so an error the daemon answered with is
    rebuilt as the same class on the client's side (`from_code`).
    """

    code = "internal"
    http_status = 500

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if _BY_CODE.setdefault(cls.code, cls) is not cls:
            raise TypeError(f"error code {cls.code!r} is taken by {_BY_CODE[cls.code].__name__}")

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadHeader(HearthError):
    code, http_status = "bad_header", 422


class NotAllowed(HearthError):
    code, http_status = "not_allowed", 403


class OverBudget(HearthError):
    code, http_status = "over_budget", 507


class ShmFull(HearthError):
    code, http_status = "shm_full", 507


class SourceChanged(HearthError):
    code, http_status = "source_changed", 409


class SourceUnreadable(HearthError):
    """Reading the source file failed (EIO from a failing disk, a network or FUSE file system): the file
    system, which the daemon reads on the caller's behalf, answered with an error (hence a gateway status)."""

    code, http_status = "source_unreadable", 502


class NotFound(HearthError):
    code, http_status = "not_found", 404


class Unauthorized(HearthError):
    code, http_status = "unauthorized", 401


class BadRequest(HearthError):
    code, http_status = "bad_request", 400


class Busy(HearthError):
    """An operation that waits for idleness (replacing an outdated daemon) found a segment held or a fill under way."""

    code, http_status = "busy", 409


class DaemonUnavailable(HearthError):
    """The client could not reach a daemon that speaks its protocol."""

    code, http_status = "daemon_unavailable", 503


class DaemonStalled(DaemonUnavailable):
    """The daemon stopped answering, or its fills stopped moving, while a client waited on an acquire."""

    code = "daemon_stalled"


def from_code(code: str, message: str) -> HearthError:
    """Rebuild the typed error a daemon answered with (unknown codes become HearthError)."""
    err = _BY_CODE.get(code, HearthError)(message)
    if type(err) is HearthError:
        err.code = code
    return err
