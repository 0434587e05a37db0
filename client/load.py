"""load_state_dict: the daemon's segment when possible, a plain load otherwise; never a wrong tensor.

Degrade, don't fail: when the daemon is down, old, refuses the file, is over budget or /dev/shm is full,
the file is loaded the stock way and one log line per reason per process says why.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import DaemonUnavailable, HearthError
from ..core.model_files import is_pickle
from . import lifecycle
from .acquire import PROBE_S, acquire, release
from .connection import Connection, connect

if TYPE_CHECKING:
    import torch

# torch (and .mapping, which needs it) are imported where a load happens, not here: the package imports
# this module, and `hearth status` and the other CLI commands must not pay ~2 s for torch they never use.

log = logging.getLogger("hearth.client")

_said: set[str] = set()
_roots: set[str] = set()
_roots_sent_to: object = None
# Lease releases still on their way (threads): the next acquire of this process waits for them, so that a
# model it has just dropped is evictable when the next one needs its room (ComfyUI switching models).
_releasing: list[threading.Thread] = []
_releasing_lock = threading.Lock()


@dataclass
class Loaded:
    """What a load returned and how: `cached` False means the stock fallback ran, for `reason`."""

    path: str
    tensors: dict[str, torch.Tensor]
    cached: bool
    hit: bool
    seconds: float
    reason: str | None = None
    key: str | None = None
    # The header's __metadata__ as read from the segment (None where it has none); the fallback reads none.
    metadata: dict[str, str] | None = None
    # The segment's bytes and how long its fill took (for a miss: what this load waited); None for a fallback.
    size: int | None = None
    fill_seconds: float | None = None


def _say_once(code: str, message: str) -> None:
    if code not in _said:
        _said.add(code)
        log.warning("Hearth: loading without the cache: %s", message)


def _connect() -> Connection:
    global _roots_sent_to
    try:
        conn = connect()
    except DaemonUnavailable:
        if not lifecycle.revive():  # where this process keeps the daemon (the pack in ComfyUI): start it
            raise
        conn = connect()
    if _roots and _roots_sent_to != (conn.pid, conn.started):
        conn.post("/v1/roots", {"roots": sorted(_roots)})  # a restarted daemon forgets them
        _roots_sent_to = (conn.pid, conn.started)
    return conn


def _from_daemon(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    from .mapping import map_segment

    conn = _connect()
    _releases_sent()
    for attempt in (0, 1):
        answer = acquire(conn, path)
        try:
            tensors, metadata = map_segment(answer["segment"], answer["size"], path)
        except FileNotFoundError:
            if attempt:  # evicted between the answer and our open, twice: give up on the cache
                raise DaemonUnavailable(f"segment of {path} vanished before it could be mapped") from None
            continue
        finally:
            # The lease covered the gap until our flock (or until the mapping failed); from now on the flock
            # says "held", for exactly as long as the tensors live. Left in place, the lease would keep a
            # model this process has dropped, or never mapped, unevictable for LEASE_GRACE_S (ComfyUI
            # switching models within the budget). Sent from a thread: this load need not wait for it, the
            # process's next one does (_releases_sent).
            _release_soon(conn, answer["key"], path)
        return tensors, metadata, answer
    raise AssertionError("unreachable")


def _release_soon(conn: Connection, key: str, path: str) -> None:
    t = threading.Thread(target=release, args=(conn, key, path), name="hearth-release", daemon=True)
    with _releasing_lock:
        _releasing[:] = [r for r in _releasing if r.is_alive()]
        _releasing.append(t)
    t.start()


def _releases_sent() -> None:
    """Until this process's releases sent so far are answered (at most PROBE_S: a daemon that does not
    answer them does not answer the acquire either, which then waits as acquire.py says)."""
    with _releasing_lock:
        pending = list(_releasing)
    deadline = time.monotonic() + PROBE_S
    for t in pending:
        t.join(max(0.0, deadline - time.monotonic()))


def _plain(path: str, device: str | int | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The stock load: what ComfyUI or a script would have run without Hearth, errors included."""
    import torch

    if is_pickle(path):
        # Never unpickle arbitrary objects: weights_only restricts to tensors and plain containers. An int
        # is a CUDA index, as load_file takes it; torch.load would call it as a function.
        location = f"cuda:{device}" if isinstance(device, int) else device
        sd = torch.load(path, map_location=location, weights_only=True)
        return sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    return _stock_load_file()(path, device=device)


def _stock_load_file() -> Callable[..., dict[str, torch.Tensor]]:
    """safetensors.torch.load_file, unless someone replaced it (a one-line speedup patches it to Hearth):
    then its own primitive, safe_open, read the way load_file reads it, so the fallback cannot recurse."""
    import safetensors.torch

    fn = safetensors.torch.load_file
    if getattr(fn, "__module__", None) == "safetensors.torch":
        return fn

    def load_file(path: str, device: str | int | torch.device = "cpu") -> dict[str, torch.Tensor]:
        with safetensors.safe_open(path, framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    return load_file


def _one_line(e: BaseException) -> str:
    """An exception as a fallback reason: torch's C++ errors carry a backtrace after the first line."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:300]}"


def absolute(path: str | os.PathLike) -> str:
    """`path` made absolute against this process's working folder, as the kernel would resolve it here.

    The daemon runs in another folder: a relative path sent as it is would name another file there. `..`
    and symlinks are left for the daemon's realpath, which resolves them in the order the kernel does.
    """
    path = os.fsdecode(os.fspath(path))
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def load(path: str | os.PathLike, stock_device: str | int | torch.device = "cpu") -> Loaded:
    """Load a checkpoint's tensors: from the daemon's segment when possible (CPU, copy-on-write views),
    else the stock way onto `stock_device`."""
    t0 = time.perf_counter()
    path = absolute(path)
    if os.environ.get("HEARTH_DISABLE"):
        reason, code = "HEARTH_DISABLE is set", "disabled"
    elif is_pickle(path):
        reason, code = f"{os.path.splitext(path)[1]} files are pickles and are not cached", "pickle"
    else:
        try:
            tensors, metadata, answer = _from_daemon(path)
            return Loaded(path, tensors, True, bool(answer.get("hit")), time.perf_counter() - t0,
                          key=answer.get("key"), metadata=metadata or None, size=answer.get("size"),
                          fill_seconds=answer.get("fill_seconds"))
        except HearthError as e:
            reason, code = e.message, e.code
        except Exception as e:  # noqa: BLE001 - any failure of the cached path is a stock load, never an error
            reason, code = _one_line(e), type(e).__name__
        _say_once(code, reason)
    tensors = _plain(path, stock_device)
    return Loaded(path, tensors, False, False, time.perf_counter() - t0, reason=reason)


def load_state_dict(path: str | os.PathLike, device: str | int = "cpu") -> dict[str, torch.Tensor]:
    """A drop-in for `safetensors.torch.load_file`: the same arguments (a str or PathLike path; a device as
    load_file takes it) and the same tensors. Where the stock load raises (a bad file, a device it refuses),
    this raises the same exception, because the stock load is what then runs."""
    cuda = isinstance(device, int) or (isinstance(device, str) and re.fullmatch(r"cuda(:\d+)?", device))
    if device != "cpu" and not cuda:
        return _plain(absolute(path), device)  # a device the stock load must judge (it refuses torch.device)
    loaded = load(path, device)
    if device == "cpu" or not loaded.cached:
        return loaded.tensors
    try:
        return {k: v.to(f"cuda:{device}" if isinstance(device, int) else device) for k, v in loaded.tensors.items()}
    except Exception:  # noqa: BLE001 - no CUDA, no such GPU: the stock load raises its own error for it
        return _plain(loaded.path, device)


def register_roots(roots: list[str]) -> None:
    """Allow these model folders for this process's loads (sent to the daemon, again after its restarts)."""
    global _roots_sent_to
    new = {os.path.realpath(r) for r in roots} - _roots
    if new:
        _roots.update(new)
        _roots_sent_to = None


def report_strategy(plan: dict) -> None:
    """Send the VRAM plan of this run to the daemon for the panel and `hearth status` (no-op when down)."""
    try:
        connect(timeout=2.0).post("/v1/strategy", plan)
    except HearthError as e:
        log.debug("strategy not reported: %s", e.message)
