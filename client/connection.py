"""Finding the user's daemon and talking to it: stdlib HTTP only, so a client process stays light."""

from __future__ import annotations

import http.client
import json
import os
import select
import threading
from collections.abc import Callable
from typing import Any

from ..core.command import hint
from ..core.errors import DaemonUnavailable, HearthError, from_code
from ..core.home import daemon_info_path
from ..core.jsonfile import read_json
from ..core.token import read_token
from ..core.version import PROTOCOL


class Connection:
    """One daemon, as announced in daemon.json; requests carry the user's token."""

    def __init__(self, info: dict, token: str, timeout: float | None):
        self.port = int(info["port"])
        self.pid = int(info["pid"])
        self.started = info.get("started")
        self.version: str | None = info.get("version")  # /v1/health's, once checked
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None, timeout: float | None = -1.0, *,
                waiting: Callable[[], None] | None = None, every: float = 2.0,
                late: Callable[[Any], None] | None = None) -> Any:
        """Send one request; raises the daemon's typed error, or DaemonUnavailable when it is gone.

        `waiting`, where given, runs every `every` seconds until the answer begins to arrive, in this thread
        (no thread per request: under load each hand-over costs a scheduling delay). What it raises ends the
        wait; the answer is then read by a thread of its own and handed to `late`."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for attempt in (0, 1):
            conn, kept = _kept.take(self.port, self.timeout if timeout == -1.0 else timeout)
            handed_over = done = False
            try:
                conn.request(method, path, body=data, headers=headers)
                while waiting is not None and not select.select([conn.sock], [], [], every)[0]:
                    try:
                        waiting()
                    except BaseException:
                        handed_over = True
                        threading.Thread(target=self._late, args=(conn, late), name="hearth-late-answer",
                                         daemon=True).start()
                        raise
                status, doc, reusable = self._answer(conn)
                done = True
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected) as e:
                if kept and attempt == 0:
                    continue  # the daemon closed the kept connection while it was idle: once more, anew
                raise DaemonUnavailable(f"the daemon on port {self.port} did not answer ({e})") from None
            except (OSError, http.client.HTTPException) as e:
                raise DaemonUnavailable(f"the daemon on port {self.port} did not answer ({e})") from None
            finally:
                if done and reusable:
                    _kept.give(self.port, conn)
                elif not handed_over:
                    conn.close()
            break
        if status >= 400:
            err = doc.get("error", {}) if isinstance(doc, dict) else {}
            raise from_code(err.get("code", "internal"), err.get("message", f"HTTP {status}"))
        return doc

    @staticmethod
    def _answer(conn: http.client.HTTPConnection) -> tuple[int, Any, bool]:
        """(status, document, whether the connection may carry another request)."""
        resp = conn.getresponse()
        payload = resp.read()
        try:
            return resp.status, json.loads(payload) if payload else {}, not resp.will_close
        except ValueError:
            raise DaemonUnavailable(f"the daemon answered {resp.status} with a body that is not JSON") from None

    def _late(self, conn: http.client.HTTPConnection, late: Callable[[Any], None] | None) -> None:
        """The answer of a request nobody waits for any more, to `late` when it is one."""
        try:
            status, doc, _ = self._answer(conn)
            if status < 400 and late is not None:
                late(doc)
        except (OSError, http.client.HTTPException, HearthError):
            pass  # a daemon gone meanwhile: nothing was leased to give back
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: dict, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)


class _Kept(threading.local):
    """Each thread's open connection to the daemon, reused by its next request: a TCP connection per
    request was a fifth of a loaded daemon's loop (accepting, setting up, closing). Per thread, since an
    HTTPConnection carries one request at a time; per process, since a forked child must not share the
    parent's socket (their answers would cross)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.conns: dict[int, http.client.HTTPConnection] = {}

    def take(self, port: int, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        """(a connection to `port`, whether it is a kept one) with `timeout` for this request."""
        if self.pid != os.getpid():
            self.pid, self.conns = os.getpid(), {}  # the parent's, inherited through fork: not ours to use
        conn = self.conns.pop(port, None)
        if conn is None or conn.sock is None:
            return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout), False
        conn.timeout = timeout
        conn.sock.settimeout(timeout)
        return conn, True

    def give(self, port: int, conn: http.client.HTTPConnection) -> None:
        old = self.conns.pop(port, None)
        if old is not None:
            old.close()
        self.conns[port] = conn


_kept = _Kept()


def read_info() -> dict | None:
    """daemon.json as the daemon wrote it (pid, port, version, protocol, started, state), or None."""
    info = read_json(daemon_info_path())
    return info if isinstance(info, dict) and "port" in info and "pid" in info else None


def listener_uid(port: int) -> int | None:
    """The user owning the socket that listens on 127.0.0.1:`port` (Linux's /proc/net/tcp), or None where
    none does or the table cannot be read."""
    want = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}  # 127.0.0.1 or 0.0.0.0, as the kernel spells them
    try:
        with open("/proc/net/tcp") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 7 and fields[3] == "0A" and fields[1] in want:  # 0A: LISTEN
                    return int(fields[7])
    except (OSError, ValueError):
        pass
    return None


def connect(timeout: float | None = 10.0, check: bool = True) -> Connection:
    """The running daemon of this user, checked alive and speaking our protocol."""
    info = read_info()
    if info is None:
        raise DaemonUnavailable(f"the Hearth daemon is not running (start it with `{hint('start')}`)")
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        raise DaemonUnavailable(f"the Hearth daemon (pid {info['pid']}) is gone; start it with "
                                f"`{hint('start')}`") from None
    except PermissionError:
        pass  # alive, owned by someone else: the token check below decides
    if info.get("state") == "stopping":
        raise DaemonUnavailable(f"the Hearth daemon (pid {info['pid']}) is stopping")
    owner = listener_uid(int(info["port"]))
    if owner is not None and owner != os.getuid():
        # The daemon died and another user's process took its port (its pid reused, or ours alive but not
        # listening): the token must not go there, nor an acquire's answer be believed from there.
        raise DaemonUnavailable(f"port {info['port']} of 127.0.0.1 is held by another user (uid {owner}), not "
                                f"by this user's daemon; start it with `{hint('start')}`")
    try:
        token = read_token()
    except HearthError as e:
        raise DaemonUnavailable(e.message) from None
    conn = Connection(info, token, timeout)
    if check:
        health = conn.get("/v1/health", timeout=2.0)
        conn.version = health.get("version")
        if health.get("protocol") != PROTOCOL:
            raise DaemonUnavailable(f"the daemon (version {health.get('version')}) speaks protocol "
                                    f"{health.get('protocol')}, this client {PROTOCOL}: restart it with "
                                    f"`{hint('restart')}` when no ComfyUI uses it")
    return conn
