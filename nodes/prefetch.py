"""Prefetch from ComfyUI's queue: when a prompt is queued, the daemon fills what its loaders name.

ComfyUI calls the handlers of `PromptServer.add_on_prompt_handler` synchronously on its event loop inside
POST /prompt, before validation (server.py: 0.3.64 :678, 0.13 :870, 0.28 :1066), with the whole body, and
goes on with what they return. The handler here does no I/O: it reads the graph (core/workflow.py, a walk
over dicts), gives the prompt the id ComfyUI would mint when the client sent none (a uuid4 string, which
ComfyUI then uses: `json_data.get("prompt_id")` in all three), and hands (id, names) to one worker thread.

The worker resolves the names through `folder_paths` and sets a hold on the daemon (daemon/holds.py):
what is not cached is filled at preload priority, and nothing the prompt names is evicted for another
background fill while it waits. Every POLL_S it reads ComfyUI's queue (`get_current_queue_volatile`, all
three releases): the hold of a prompt still queued or running is renewed (every RENEW_S, every RETRY_S
while some of its files had no room), the hold of one that left the queue is dropped, and one never seen
there (validation refused it) is let go after UNSEEN_S. A hold also lapses by itself (HOLD_S) if this
process dies or hangs.

Which loaders: Hearth's always; ComfyUI's own while the stock-loader setting (stock_setting.py) is on,
since only then do they read through Hearth. The daemon's `prefetch` setting turns it off. The node's own
acquire of a file being prefetched waits on that same fill, raised to its priority (single flight:
daemon/fills.py). Nothing here can fail a prompt: a daemon that is down or refuses costs a debug line.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import folder_paths

from ..client import register_roots
from ..client.config import daemon_config
from ..client.hold import hold, release_hold
from ..core.errors import HearthError
from ..core.model_files import is_cached_kind
from ..core.workflow import HEARTH_LOADERS, STOCK_LOADERS, ModelRef, models_in
from .sources import model_folders

log = logging.getLogger("hearth.nodes")

MARK = "__hearth_prefetch__"  # on the handler: a pack imported twice registers once per server
HOLD_S = 120.0
RENEW_S = 30.0
RETRY_S = 2.0
POLL_S = 1.0
UNSEEN_S = 30.0


def stock_loaders_on() -> bool:
    """Whether ComfyUI's own loaders read through Hearth now (issue 18's setting; reads a settings file)."""
    from . import stock_setting

    return stock_setting.enabled()


@dataclass
class _Held:
    paths: list[str]
    since: float
    sent: float = 0.0
    waits: bool = False
    seen: bool = False


class Prefetcher:
    """The prompt handler and its worker for one ComfyUI server."""

    def __init__(self, server: Any):
        self._server = server
        self._inbox: queue.SimpleQueue[tuple[str, list[ModelRef]]] = queue.SimpleQueue()
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---- on ComfyUI's event loop: no I/O -----------------------------------------------------------

    def on_prompt(self, body: Any) -> Any:
        try:
            if isinstance(body, dict) and isinstance(body.get("prompt"), dict):
                refs = models_in(body["prompt"])
                if refs:
                    if body.get("prompt_id") is None:
                        body["prompt_id"] = str(uuid.uuid4())
                    self._inbox.put((str(body["prompt_id"]), refs))
                    self._start_worker()
        except Exception:  # a graph this cannot read is ComfyUI's to refuse, not ours
            log.debug("Hearth prefetch: graph not read", exc_info=True)
        return body

    def _start_worker(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="hearth-prefetch", daemon=True)
                self._thread.start()

    # ---- the worker thread ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=POLL_S)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._new(*item)
                self._tick()
            except Exception:  # the worker outlives any one prompt's trouble
                log.debug("Hearth prefetch failed", exc_info=True)

    def _new(self, prompt_id: str, refs: list[ModelRef]) -> None:
        if os.environ.get("HEARTH_DISABLE"):
            return
        classes = HEARTH_LOADERS | (STOCK_LOADERS if stock_loaders_on() else frozenset())
        paths = []
        for ref in refs:
            if ref.class_type not in classes:
                continue
            path = folder_paths.get_full_path(ref.folder, ref.name)
            if path is not None and is_cached_kind(path) and os.path.abspath(path) not in paths:
                paths.append(os.path.abspath(path))
        if not paths:
            return
        register_roots([p for _, p in model_folders()])  # the daemon serves files of allowed folders only
        held = _Held(paths, time.monotonic())
        if self._send(prompt_id, held, first=True):
            self._held[prompt_id] = held

    def _send(self, prompt_id: str, held: _Held, first: bool = False) -> bool:
        """Set or renew the hold; False when the daemon's prefetch setting is off."""
        try:
            if first and not daemon_config().get("prefetch", True):
                return False
            answer = hold(prompt_id, held.paths, HOLD_S)
        except HearthError as e:
            log.debug("Hearth prefetch for prompt %s not sent: %s", prompt_id, e.message)
            held.sent = time.monotonic()
            return True  # tried again at the next renewal
        held.sent, held.waits = time.monotonic(), bool(answer.get("waits"))
        if first and answer.get("queued"):
            log.info("Hearth: prefetching for queued prompt %s: %s", prompt_id[:8],
                     ", ".join(os.path.basename(q["path"]) for q in answer["queued"]))
        return True

    def _tick(self) -> None:
        if not self._held:
            return
        running, pending = self._server.prompt_queue.get_current_queue_volatile()
        waiting = {item[1] for item in [*running, *pending]}  # (number, prompt_id, prompt, ...)
        now = time.monotonic()
        for prompt_id, held in list(self._held.items()):
            if prompt_id in waiting:
                held.seen = True
                if now - held.sent >= (RETRY_S if held.waits else RENEW_S):
                    self._send(prompt_id, held)
            elif held.seen or now - held.since > UNSEEN_S:
                del self._held[prompt_id]
                try:
                    release_hold(prompt_id)
                except HearthError as e:  # it lapses by itself
                    log.debug("Hearth prefetch: hold of %s not dropped: %s", prompt_id, e.message)


def register() -> None:
    """Add the prefetch to this process's ComfyUI server, once per server; never raises."""
    try:
        from server import PromptServer  # ComfyUI's

        server = getattr(PromptServer, "instance", None)
        if server is None or any(getattr(h, MARK, False) for h in getattr(server, "on_prompt_handlers", ())):
            return
        prefetcher = Prefetcher(server)

        def on_prompt(body: Any) -> Any:
            return prefetcher.on_prompt(body)

        setattr(on_prompt, MARK, True)
        server.add_on_prompt_handler(on_prompt)
    except Exception:  # the prefetch is optional; the nodes must still load
        log.exception("Hearth: could not add the queue's prefetch")
