"""Hostile requests to a real daemon, and the contract every answer is held to.

`requests()` draws a request to one of the daemon's routes (or near one): a method, a target with odd
spellings and queries, the Host, token and Origin right or wrong, a Content-Type and other headers, a body
of the route's fields filled with well-typed, ill-typed and hostile values (paths of real model files,
fuzzed .safetensors files written for the request, files outside the allowed folders, FIFOs, symlinks,
relative, NUL, surrogates, very long), or JSON of another shape, or bytes that are no JSON, or a request
that is not HTTP at all. Paths, keys and pids are placeholders resolved when the request is sent, against
the `Target` (the daemon and its folders).

`Target.send` sends it over a raw socket and checks the answer: never a 5xx but the documented 502 and
507, never an "internal" error code, errors of the API as {"error": {"code", "message"}}, an answer within
HANG_S; an acquire that succeeds names a segment holding the source's exact bytes, and only of a file the
stock load accepts. `Target.serving` checks the daemon still answers; `Target.drain` empties the cache and
checks that nothing is left behind: no file in the tmpfs folder, no descriptor of the daemon on it, no
more descriptors than before the run.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from . import header
from .header import Violation, json_values

HANG_S = 20.0  # a request the daemon has not answered by then is a hang (a small fill takes milliseconds)


class Ref(str):
    """A placeholder in a request, resolved when it is sent: kind:detail (a path, a key, a pid)."""


# ---- the generator ----------------------------------------------------------------------------------

PATH_KINDS = ["model", "model", "model", "fuzzed", "fuzzed", "missing", "dir", "outside", "dotdot", "notmodel",
              "symlink_out", "symlink_in", "fifo", "devzero", "relative", "tilde", "long", "nul", "surrogate",
              "trailing_slash", "empty"]
path_values = st.sampled_from(PATH_KINDS).map(lambda k: Ref(f"path:{k}")) | json_values
pid_values = (st.sampled_from(["self", "dead"]).map(lambda k: Ref(f"pid:{k}"))
              | st.sampled_from([0, -1, 2**31, 2**70, True, "123", None, 1.5]))
key_values = st.sampled_from(["seen", "seen", "random"]).map(lambda k: Ref(f"key:{k}")) | json_values
flags = st.booleans() | json_values
sizes = st.sampled_from(["auto", "1M", "100M", "1G", "50%", "0", "1", "0.5G", "1e3", "-1G", "12 G", "101%",
                         "nan", "inf", "", "G"]) | st.integers() | st.floats() | json_values
paths_list = st.lists(path_values, max_size=3) | json_values

FIELDS: dict[str, dict[str, st.SearchStrategy]] = {
    "/v1/acquire": {"path": path_values, "pid": pid_values},
    "/v1/release": {"key": key_values, "pid": pid_values},
    "/v1/preload": {"paths": paths_list},
    "/v1/evict": {"path": path_values, "all": flags, "key": key_values},
    "/v1/pin": {"path": path_values, "pinned": flags},
    "/v1/hold": {"hold": st.sampled_from(["prompt-1", "prompt-2", ""]) | json_values, "paths": paths_list,
                 "pid": pid_values, "seconds": st.sampled_from([0.5, 5, 60, -1, 0, 1e9]) | json_values},
    "/v1/config": {"budget": sizes, "max_fills": st.integers(-2, 20) | st.floats() | json_values,
                   "model_dirs": paths_list, "pinned": paths_list, "autostart": flags,
                   "no_such_setting": json_values},
    "/v1/strategy": {"strategy": json_values, "model": json_values, "reported": json_values},
    "/v1/roots": {"roots": paths_list},
}
# /v1/shutdown is left out: it is the one request meant to stop the daemon (a token holder's right)
GETS = ["/v1/health", "/v1/status", "/v1/config", "/v1/strategy", "/v1/roots", "/v1/events", "/",
        "/favicon.ico", "/panel/lib/panel.js", "/panel/../daemon/http.py", "/panel/%2e%2e/core/token.py",
        "/panel/", "/panel/lib/", "/v1/", "/v1", "/v2/status"]
METHODS = ["GET", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT"]
CONTENT_TYPES = [None, "application/json", "application/json", "application/json", "application/json",
                 "application/json", "application/json", "application/json; charset=utf-8",
                 "application/json; charset=latin-1", "application/json; charset=no-such-codec",
                 "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; boundary="]
EXTRA_HEADERS = [("Content-Encoding", "gzip"), ("Content-Encoding", "deflate"), ("Content-Encoding", "br"),
                 ("Content-Encoding", "x-unknown"), ("Expect", "100-continue"), ("Connection", "close"),
                 ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                 ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-Fetch-Site", "cross-site"),
                 ("X-Forwarded-For", "10.0.0.1"), ("Accept-Encoding", "gzip"), ("Cookie", "a=b"),
                 ("Range", "bytes=0-1"), ("If-None-Match", "*"), ("Transfer-Encoding", "gzip")]


@dataclass
class Request:
    method: str
    target: str
    host: str  # own, localhost, ipv6, evil, none, or a literal value
    auth: str  # right, wrong, none, basic, lower, double_space, query
    origin: str | None  # None, own, localhost, evil, null
    content_type: str | None
    extra: list
    body: Any  # ("json", tree) | ("bytes", bytes) | ("huge", n) | None
    framing: str  # length, chunked, overlong (bytes after Content-Length), garbage
    file: bytes | None = None  # a fuzzed .safetensors file, written before sending, named by path:fuzzed
    garbage: bytes = b""

    def describe(self) -> dict:
        """The request as JSON (placeholders as {"$ref": ...}, bytes as hex): a corpus entry, a reproducer."""
        return {"method": self.method, "target": self.target, "host": self.host, "auth": self.auth,
                "origin": self.origin, "content_type": self.content_type, "extra": [list(x) for x in self.extra],
                "body": None if self.body is None else [self.body[0], _described(self.body[1])],
                "framing": self.framing, "file": self.file.hex() if self.file else None,
                "garbage": self.garbage.hex()}

    @classmethod
    def described(cls, doc: dict) -> Request:
        """The request `describe` wrote."""
        body = None if doc["body"] is None else (doc["body"][0], _undescribed(doc["body"][1]))
        return cls(doc["method"], doc["target"], doc["host"], doc["auth"], doc["origin"], doc["content_type"],
                   [tuple(x) for x in doc["extra"]], body, doc["framing"],
                   bytes.fromhex(doc["file"]) if doc["file"] else None, bytes.fromhex(doc["garbage"]))


def _described(v: Any) -> Any:
    if isinstance(v, Ref):
        return {"$ref": str(v)}
    if isinstance(v, bytes):
        return {"$hex": v.hex()}
    if isinstance(v, dict):
        return {k: _described(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_described(x) for x in v]
    return v


def _undescribed(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"$ref"}:
            return Ref(v["$ref"])
        if set(v) == {"$hex"}:
            return bytes.fromhex(v["$hex"])
        return {k: _undescribed(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_undescribed(x) for x in v]
    return v


@st.composite
def _body(draw, route: str):
    kind = draw(st.sampled_from(["fields", "fields", "fields", "fields", "json", "bytes", "none", "huge"]))
    if kind == "fields" and route in FIELDS:
        fields = FIELDS[route]
        chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=len(fields)))
        tree = {k: draw(fields[k]) for k in chosen}
        if draw(st.booleans()):
            tree.update(draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)))
        return ("json", tree)
    if kind == "json":
        return ("json", draw(json_values))
    if kind == "bytes":
        return ("bytes", draw(st.binary(max_size=64) | st.sampled_from(
            [b"{", b'{"path": "\\ud800"}', b'{"max_fills": Infinity}', b'{"budget": NaN}', b"\xff\xfe{}",
             b'{"a": 1, "a": 2}', b"[" * 10000 + b"]" * 10000, b'{"path": 1e999}', b"\x00"])))
    if kind == "huge":
        return ("huge", draw(st.sampled_from([(1 << 20) - 10, (1 << 20) + 1, 3 << 20])))
    return None


@st.composite
def requests(draw) -> Request:
    """One request to the daemon, well-formed most of the time so that it reaches the handlers."""
    if draw(st.integers(0, 14)) == 0:
        route, method = draw(st.sampled_from(GETS)), draw(st.sampled_from(METHODS))
    else:
        route = draw(st.sampled_from(sorted(FIELDS)))
        method = "POST" if draw(st.integers(0, 5)) else draw(st.sampled_from(METHODS))
    target = route
    how = draw(st.sampled_from(["as_is"] * 30 + ["slash", "double", "case", "percent", "query", "suffix"]))
    if how == "slash":
        target += "/"
    elif how == "double":
        target = target.replace("/", "//", 1)
    elif how == "case":
        target = target.upper()
    elif how == "percent":
        target = target[:-1] + f"%{ord(target[-1]):02x}"
    elif how == "query":
        target += "?" + draw(st.sampled_from(["token=x", "token={token}", "a=1&a=2", "%zz", "=", "x" * 5000]))
    elif how == "suffix":
        target += draw(st.from_regex(r"[A-Za-z0-9/._%~-]{1,12}", fullmatch=True))
    framing = draw(st.sampled_from(["length"] * 24 + ["chunked", "chunked", "overlong", "garbage"]))
    body = _body(route) if method not in ("GET", "HEAD") or draw(st.booleans()) else st.none()
    req = Request(
        method=draw(st.sampled_from([method] * 30 + ["get", "P\u00d6ST", "X-CUSTOM"])), target=target,
        host=draw(st.sampled_from(["own"] * 40 + ["localhost", "ipv6", "evil", "none", "no_port", "127.0.0.1:1"])),
        auth=draw(st.sampled_from(["right"] * 40 + ["wrong", "none", "basic", "lower", "double_space", "query"])),
        origin=draw(st.sampled_from([None] * 30 + ["own", "localhost", "evil", "null"])),
        content_type=draw(st.sampled_from(CONTENT_TYPES)),
        extra=[] if draw(st.integers(0, 3)) else draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2,
                                                               unique=True)),
        body=draw(body), framing=framing)
    if req.body and req.body[0] == "json" and "path:fuzzed" in json.dumps(req.body[1], default=str):
        req.file = draw(header.files())
    if framing == "garbage":
        req.garbage = draw(st.binary(min_size=1, max_size=200) | st.sampled_from([
            b"GET / HTTP/9.9\r\n\r\n", b"GET /v1/status\r\n\r\n", b"\r\n\r\n",
            b"GET " + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
            b"POST /v1/acquire HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST /v1/acquire HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"v" * 10000 + b"\r\n\r\n",
            b"GET /v1/status HTTP/1.1\r\nBad Header\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]))
    return req


# ---- the daemon under test ------------------------------------------------------------------------------

@dataclass
class Target:
    """The daemon under fuzz and the files its requests name. `models` is an allowed folder; `outside` not."""

    port: int
    token: str
    pid: int
    models: Path
    outside: Path
    shm: Path
    worker: str = "w0"
    seen_keys: list = field(default_factory=list)
    leases: set = field(default_factory=set)
    sent: int = 0
    dead_pid: int = 0
    _fuzzed: int = 0

    def __post_init__(self) -> None:
        p = subprocess.Popen(["true"])
        p.wait()
        self.dead_pid = p.pid

    @staticmethod
    def prepare(models: Path, outside: Path) -> list[Path]:
        """The files the requests name (run once per folder pair, before any worker)."""
        import torch
        from safetensors.torch import save_file

        made = []
        for i in range(3):
            path = models / f"m{i}.safetensors"
            save_file({"w": torch.arange(100 * (i + 1), dtype=torch.float32), "b": torch.ones(3, dtype=torch.int8)},
                      str(path), metadata={"i": str(i)})
            made.append(path)
        (models / "dir.safetensors").mkdir(exist_ok=True)
        (models / "notes.txt").write_text("not a model")
        outside.mkdir(parents=True, exist_ok=True)
        save_file({"secret": torch.zeros(4)}, str(outside / "m.safetensors"))
        for link, to in ((models / "link_out.safetensors", outside / "m.safetensors"),
                         (models / "link_in.safetensors", models / "m0.safetensors"),
                         (models / "zero.safetensors", Path("/dev/zero"))):
            if not link.is_symlink():
                os.symlink(to, link)
        if not (models / "fifo.safetensors").exists():
            os.mkfifo(models / "fifo.safetensors")
        (models / "fuzzed").mkdir(exist_ok=True)
        return made

    # resolving placeholders

    def _path(self, kind: str, req: Request, draw_index: int) -> str:
        m = self.models
        return {
            "model": str(m / f"m{draw_index % 3}.safetensors"),
            "fuzzed": str(self._fuzzed_path()),
            "missing": str(m / "missing.safetensors"), "dir": str(m / "dir.safetensors"),
            "outside": str(self.outside / "m.safetensors"),
            "dotdot": str(m / ".." / self.outside.name / "m.safetensors"),
            "notmodel": str(m / "notes.txt"), "symlink_out": str(m / "link_out.safetensors"),
            "symlink_in": str(m / "link_in.safetensors"), "fifo": str(m / "fifo.safetensors"),
            "devzero": str(m / "zero.safetensors"), "relative": "m0.safetensors", "tilde": "~/m0.safetensors",
            "long": f"{m}/" + ("x" * 300 + "/") * 20 + "m.safetensors", "nul": str(m / "m0\0.safetensors"),
            "surrogate": str(m / "m\ud800.safetensors"), "trailing_slash": str(m / "m0.safetensors") + "/",
            "empty": "",
        }[kind]

    def _fuzzed_path(self) -> Path:
        return self.models / "fuzzed" / f"{self.worker}-{self._fuzzed}.safetensors"

    def _resolve(self, v: Any, req: Request, counter: list) -> Any:
        if isinstance(v, Ref):
            kind, what = v.split(":", 1)
            counter[0] += 1
            if kind == "path":
                return self._path(what, req, counter[0])
            if kind == "pid":
                return os.getpid() if what == "self" else self.dead_pid
            if what == "seen" and self.seen_keys:
                return self.seen_keys[counter[0] % len(self.seen_keys)]
            return "0123456789abcdef"
        if isinstance(v, dict):
            return {k: self._resolve(x, req, counter) for k, x in v.items()}
        if isinstance(v, list):
            return [self._resolve(x, req, counter) for x in v]
        return v

    def _bytes(self, req: Request) -> tuple[bytes, Any]:
        """The request as it goes on the wire, and its body's JSON tree (placeholders resolved)."""
        own = f"127.0.0.1:{self.port}"
        tree = None
        if req.body is None:
            body = b""
        elif req.body[0] == "json":
            tree = self._resolve(req.body[1], req, [0])
            body = json.dumps(tree).encode("utf-8", "surrogatepass")
        elif req.body[0] == "bytes":
            body = req.body[1]
        else:
            body = json.dumps({"path": "x" * req.body[1]}).encode()
        target = req.target.replace("{token}", self.token)
        if req.auth == "query":
            target += ("&" if "?" in target else "?") + f"token={self.token}"
        lines = [f"{req.method} {target} HTTP/1.1"]
        host = {"own": own, "localhost": f"localhost:{self.port}", "ipv6": f"[::1]:{self.port}",
                "evil": "evil.example", "none": None, "no_port": "127.0.0.1"}.get(req.host, req.host)
        if host is not None:
            lines.append(f"Host: {host}")
        auth = {"right": f"Bearer {self.token}", "wrong": "Bearer wrong", "none": None, "basic": "Basic dXNlcg==",
                "lower": f"bearer {self.token}", "double_space": f"Bearer  {self.token}", "query": None}[req.auth]
        if auth:
            lines.append(f"Authorization: {auth}")
        if req.origin:
            lines.append("Origin: " + {"own": f"http://{own}", "localhost": f"http://localhost:{self.port}",
                                       "evil": "http://evil.example", "null": "null"}[req.origin])
        if req.content_type:
            lines.append(f"Content-Type: {req.content_type}")
        lines += [f"{k}: {v}" for k, v in req.extra]
        if req.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            wire = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100]) for i in range(0, len(body), 100))
            body = wire + b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        head = "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n"
        if req.framing == "overlong":
            body += b"GET /v1/status HTTP/1.1\r\n\r\n"  # a second, pipelined request the first did not count
        return (req.garbage if req.framing == "garbage" else head + body), tree

    # sending and checking

    def send(self, req: Request) -> str:
        """Send one request and hold its answer to the contract; the outcome, or Violation."""
        self.sent += 1
        if req.file is not None:
            self._fuzzed += 1
            self._fuzzed_path().write_bytes(req.file)
        wire, tree = self._bytes(req)
        t0 = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=HANG_S)
        cut_short = False
        try:
            try:
                sock.sendall(wire)
                if req.framing == "garbage":  # maybe a request cut short: end it, or the daemon rightly waits
                    sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                cut_short = True  # the daemon answered (a bad method, a body too large) and closed meanwhile
            resp = http.client.HTTPResponse(sock, method=req.method.upper() if req.framing != "garbage" else "GET")
            try:
                resp.begin()
                payload = resp.read()
            except TimeoutError:
                raise Violation("hang", f"no answer in {HANG_S:.0f} s") from None
            except (http.client.HTTPException, ConnectionError) as e:
                # not HTTP, or closed while we still sent (its answer may be lost to the reset): an answer
                if cut_short or req.framing in ("garbage", "overlong"):
                    return f"closed ({type(e).__name__})"
                raise Violation("no_answer", f"the daemon closed the connection: {type(e).__name__}") from None
        finally:
            sock.close()
        seconds = time.monotonic() - t0
        if seconds > HANG_S:
            raise Violation("hang", f"answered after {seconds:.1f} s")
        return self._check(req, tree, resp.status, payload)

    def _check(self, req: Request, tree: Any, status: int, payload: bytes) -> str:
        if status >= 500 and status not in (502, 507):  # 502: source_unreadable, 507: over_budget, shm_full
            raise Violation("internal", f"HTTP {status}: {payload[:300]!r}")
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            doc = None
        route = req.target.split("?")[0]
        if isinstance(doc, dict) and "error" in doc:
            err = doc["error"]
            if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)):
                raise Violation("error_shape", f"HTTP {status}: {payload[:300]!r}")
            if err["code"] == "internal":
                raise Violation("internal", f"HTTP {status}: {err['message'][:300]}")
            return f"{status} {err['code']}"
        if status >= 400 and route.startswith("/v1/") and req.framing != "garbage" and payload \
                and not payload.startswith(b"400: ") and status not in (400, 413, 415, 431):
            raise Violation("error_shape", f"HTTP {status} without a JSON error: {payload[:300]!r}")
        if status == 200 and route == "/v1/acquire" and req.method == "POST" and isinstance(doc, dict):
            self._check_acquired(tree, doc)
        return f"{status}"

    def _check_acquired(self, tree: Any, doc: dict) -> None:
        """An acquire's segment holds its source's exact bytes, of a file the stock load accepts."""
        for k in ("segment", "key", "size"):
            if k not in doc:
                raise Violation("answer_shape", f"acquire answered {doc!r}")
        self.seen_keys.append(doc["key"])
        del self.seen_keys[:-20]
        pid = tree.get("pid") if isinstance(tree, dict) else None
        if type(pid) is int and pid > 0:
            self.leases.add((doc["key"], pid))
        source = os.path.realpath(tree["path"])
        try:
            seg = Path(doc["segment"]).read_bytes()
        except FileNotFoundError:
            return  # evicted meanwhile by another worker's request
        if seg != Path(source).read_bytes():
            raise Violation("wrong_segment", f"the segment of {source} does not hold its bytes")
        if Path(source).parent.name == "fuzzed":
            stock = header._stock(Path(source))
            if isinstance(stock, BaseException):
                raise Violation("lenient", f"served {source}, which the stock load refuses: {stock}")

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def serving(self) -> None:
        """The daemon answers its health route (Violation: "down" when it does not)."""
        try:
            status, _ = self.api("GET", "/v1/health", timeout=5.0)
        except OSError as e:
            raise Violation("down", f"health did not answer: {e}") from None
        if status != 200:
            raise Violation("down", f"health answered {status}")

    def fds(self) -> list[str]:
        out = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                pass
        return out

    def drain(self, baseline_fds: int, timeout: float = 60.0) -> None:
        """Give back the leases the run took, unpin, evict everything; then nothing may be left behind.

        Descriptors are counted a moment after the last request, once its connection has closed.
        """
        for key, pid in sorted(self.leases):
            self.api("POST", "/v1/release", {"key": key, "pid": pid})
        self.api("POST", "/v1/config", {"pinned": [], "budget": "auto"})
        deadline = time.monotonic() + timeout
        while True:
            _, status = self.api("GET", "/v1/status")
            busy = status["pending"] or any(s["state"] == "filling" for s in status["segments"])
            if not busy:
                self.api("POST", "/v1/evict", {"all": True})
                _, status = self.api("GET", "/v1/status")
            time.sleep(0.3)
            names = sorted(os.listdir(self.shm))
            fds = self.fds()
            on_shm = [t for t in fds if t.startswith(str(self.shm))]
            if not busy and not status["segments"] and not names and not on_shm and len(fds) <= baseline_fds:
                return
            if time.monotonic() > deadline:
                raise Violation("leak", f"after the run: segments {[s['state'] for s in status['segments']]}, "
                                        f"fills pending {status['pending']}, tmpfs {names}, daemon fds {len(fds)} "
                                        f"(before: {baseline_fds}), on the tmpfs {on_shm}")
