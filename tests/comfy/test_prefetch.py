"""Prefetch from ComfyUI's queue (nodes/prefetch.py) in a real ComfyUI with a real daemon.

A prompt queued behind a running one has what its loaders name filled while it waits: the fill is
finished before the running prompt is, the loader's acquire is then a hit, and what it names is held
(kept from eviction for background fills) until it ran.
"""

from __future__ import annotations

import os
import time

import pytest

from harness import graphs
from harness.server import ComfyServer

from .comfy_support import CKPT, LORA_A, LORA_B, free_cache, hearth_graph

SLOW_STEPS = 12  # the running prompt: long enough on a CPU for the queued one's fill (a LoRA) to finish first


def _queue(server: ComfyServer, graph: dict) -> str:
    return server.post("/prompt", {"prompt": graph, "client_id": server.client_id})["prompt_id"]


def _running(server: ComfyServer) -> list[str]:
    return [item[1] for item in server.get("/queue")["queue_running"]]


def _done(server: ComfyServer, prompt_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            assert entry["status"]["status_str"] == "success", entry["status"]
            return entry
        time.sleep(0.1)
    raise AssertionError(f"prompt {prompt_id} did not finish:\n{server.log()[-3000:]}")


def _segment(daemon, path) -> dict | None:
    real = os.path.realpath(path)
    return next((s for s in daemon.status()["segments"] if s["path"] == real and s["state"] != "stale"), None)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_queued_prompt_has_its_models_filled_and_held_while_it_waits(comfy, daemon, models):
    lora = models.lora(LORA_A)
    daemon.api("POST", "/v1/evict", {"all": True})
    free_cache(comfy)  # so the next prompt's loader runs and fills the checkpoint again
    comfy.run(hearth_graph())  # the checkpoint warm, as in a session: only the LoRA is new to the cache
    assert _segment(daemon, lora) is None
    fills = daemon.status()["stats"]["fills"]

    slow = _queue(comfy, graphs.txt2img(CKPT, steps=SLOW_STEPS, seed=1))
    queued = _queue(comfy, hearth_graph([(LORA_A, 0.8, 0.8)], seed=2))
    ready = _wait(lambda: (s := _segment(daemon, lora)) and s["state"] == "ready" and s, 60, "the prefetch")
    assert _running(comfy) == [slow], "the LoRA was filled only once the queued prompt ran"
    holds = {h["id"]: h for h in daemon.status()["holds"]}
    assert set(holds[queued]["paths"]) == {os.path.realpath(models.checkpoint(CKPT)), os.path.realpath(lora)}
    assert ready["hits"] == 0

    _done(comfy, slow)
    _done(comfy, queued)
    st = daemon.status()
    assert _segment(daemon, lora)["hits"] == 1  # the swapper's acquire found it ready
    assert st["stats"]["fills"] == fills + 1  # one fill of it: the prefetch's
    _wait(lambda: not daemon.status()["holds"], 10, "the hold to go once the prompt ran")
    assert "prefetching for queued prompt" in comfy.log()


def test_a_prompt_with_its_own_id_and_one_without_models(comfy, daemon):
    """The handler leaves a client's prompt_id alone and does nothing for a graph without loaders."""
    given = "3f5f0a9e-8d3b-4a57-9f7e-0c1d2b3a4f5e"
    body = {"prompt": hearth_graph(seed=5), "client_id": comfy.client_id, "prompt_id": given}
    assert comfy.post("/prompt", body)["prompt_id"] == given
    _done(comfy, given)
    plain = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
             "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    _done(comfy, _queue(comfy, plain))
    _wait(lambda: not daemon.status()["holds"], 10, "no hold left")


@pytest.mark.parametrize("stock_loaders", [True, False])
def test_stock_loaders_are_prefetched_only_under_their_setting(comfy_checkout, models, daemon, tmp_path,
                                                               stock_loaders):
    lora = models.lora(LORA_B)
    server = ComfyServer.with_hearth(comfy_checkout, tmp_path / "comfy", models.extra_model_paths, daemon.home)
    server.env_overrides["HEARTH_STOCK_LOADERS"] = "1" if stock_loaders else "0"
    with server:
        daemon.api("POST", "/v1/evict", {"path": str(lora)}) if _segment(daemon, lora) else None
        slow = _queue(server, graphs.to_stock(graphs.txt2img(CKPT, steps=SLOW_STEPS, seed=3)))
        queued = _queue(server, graphs.to_stock(hearth_graph([(LORA_B, 1.0, 1.0)], seed=4)))
        if stock_loaders:
            _wait(lambda: (s := _segment(daemon, lora)) and s["state"] == "ready", 60, "the stock prefetch")
            assert _running(server) == [slow]
            assert queued in {h["id"] for h in daemon.status()["holds"]}
        else:
            _wait(lambda: queued in [i[1] for i in server.get("/queue")["queue_pending"]], 30, "the queue")
            time.sleep(2 * 1.0 + 0.5)  # two of the worker's polls
            assert _segment(daemon, lora) is None and not daemon.status()["holds"]
        _done(server, slow)
        _done(server, queued)


def test_the_daemon_s_prefetch_setting_turns_it_off(comfy, daemon, models):
    lora = models.lora(LORA_B)
    daemon.api("POST", "/v1/config", {"prefetch": False})
    try:
        if _segment(daemon, lora):
            daemon.api("POST", "/v1/evict", {"path": str(lora)})
        # it must still run after the queue is seen and 2.5 s more, whatever the machine's speed
        slow = _queue(comfy, graphs.txt2img(CKPT, steps=4 * SLOW_STEPS, seed=6))
        queued = _queue(comfy, hearth_graph([(LORA_B, 1.0, 1.0)], seed=7))
        _wait(lambda: queued in [i[1] for i in comfy.get("/queue")["queue_pending"]], 30, "the queue")
        time.sleep(2.5)
        assert _running(comfy) == [slow] and _segment(daemon, lora) is None
        assert not daemon.status()["holds"]
        _done(comfy, slow)
        _done(comfy, queued)
    finally:
        daemon.api("POST", "/v1/config", {"prefetch": True})
