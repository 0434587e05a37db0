"""Scenarios 11-13 (issue 16): warm before you ask.

11. reboot -> first prompt. "A reboot" here: the daemon stops, its segments are removed from its tmpfs
    folder and the page cache of every model file is dropped; then the daemon and a fresh ComfyUI start
    together, as at login, and the first txt2img prompt is queued once ComfyUI answers. Hearth with the
    warm set (on: it refills what was cached) beside Hearth with it off (the loader fills cold) and stock
    (reads the files cold); the reference of the issue's target is Hearth's first prompt with the segments
    kept (no reboot), measured in the same run. And a prompt that runs while the warm set refills another
    checkpoint (a copy of the run's), beside the same prompt without a refill.
12. a queue of 4 prompts over 2 checkpoints (A, B, A, B; segments and page cache cold at the start), all
    queued at once in a fresh ComfyUI: Hearth with the queue's prefetch on and off, beside stock. The second
    checkpoint is a copy of the run's (another file: another segment), made once next to it.
13. the first sampler step of a fresh ComfyUI (txt2img, 1 step), Hearth's loader with eager load off and
    on, beside stock: where the first step's page faults go.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from itertools import pairwise
from pathlib import Path

from harness import graphs
from harness.server import ComfyServer

from ..load import drop_page_cache
from .fixture import CKPT, HEARTH, LOADER_ID, LORAS, STOCK, Bench, txt2img_graph, warm_page_cache
from .loading import checkpoint_event, timed_run

SAMPLER_ID = "5"  # the KSampler of the pack's txt2img graph
CKPT_B = "sd15_b.safetensors"
QUEUE = ("A", "B", "A", "B")
QUEUE_STEPS = 6  # each prompt samples about as long as a cold fill of the other checkpoint takes here
DURING_STEPS = 10  # a prompt that outlasts the refill of a checkpoint


# ---- 11: reboot -> first prompt ---------------------------------------------------------------------

def _model_files(bench: Bench) -> list[Path]:
    return [bench.checkpoint, *map(bench.models.lora, LORAS)]


def _reboot(bench: Bench, warm_set: str) -> float:
    """Stop the daemon, lose its segments and every model's page cache, start it with `warm_set`; the
    daemon's start-up seconds."""
    d = bench.daemon
    d.api("POST", "/v1/config", {"warm_set": warm_set})
    d.stop()
    for name in os.listdir(d.shm_dir):
        if name.startswith(f"hearth-{os.getuid()}-"):
            os.unlink(d.shm_dir / name)
    for path in _model_files(bench):
        drop_page_cache(path)
    t0 = time.perf_counter()
    d.start()
    return time.perf_counter() - t0


def _first_prompt(bench: Bench, side: str) -> dict:
    with bench.running(side) as server:
        queued = time.time()
        run, wall = timed_run(server, txt2img_graph(side))
    event = checkpoint_event(run) or {}
    return {"prompt_s": wall, "loader_s": run.node_seconds().get(LOADER_ID), "status": event.get("status"),
            "queued": queued}


def _refill_seconds(bench: Bench) -> float | None:
    w = bench.daemon.status()["warm_set"]
    return w["finished"] - w["started"] if w["started"] and w["finished"] else None


def _prompt_during_refill(bench: Bench, other: Path) -> dict:
    """A prompt running in a ComfyUI that holds its model while the warm set refills another checkpoint
    (lost as in a reboot; the daemon restarts under the running ComfyUI), beside the same prompt without."""
    d = bench.daemon
    key = bench.acquire(other)["key"]

    def graph(seed: int) -> dict:
        g = txt2img_graph(HEARTH)
        g[SAMPLER_ID]["inputs"].update(steps=DURING_STEPS, seed=seed)
        return g

    with bench.running(HEARTH) as server:
        timed_run(server, txt2img_graph(HEARTH))  # the model loaded: the prompts below only sample and decode
        alone = timed_run(server, graph(21))[1]
        d.stop()
        for seg in d.shm_dir.glob(f"hearth-{os.getuid()}-*-{key}"):
            seg.unlink()
        drop_page_cache(other)
        d.start()
        started = time.time()
        during = timed_run(server, graph(22))[1]
    w = d.status()["warm_set"]
    overlap = (w["finished"] or time.time()) - started
    d.api("POST", "/v1/evict", {"path": str(other)})  # out of the cache and the index: the reboots refill A
    return {"alone_s": alone, "during_s": during, "refill_overlap_s": min(overlap, during),
            "refilled": [x["path"] for x in w["done"]]}


def reboot_first_prompt(bench: Bench, repeats: int) -> dict:
    out: dict = {"refilled": [], "cold": [], "kept": [], "stock": [], "stock_warm": [], "during": []}
    other = second_checkpoint(bench)
    try:
        for _ in range(repeats):
            out["during"].append(_prompt_during_refill(bench, other))
            _reboot(bench, "on")
            r = _first_prompt(bench, HEARTH)
            w = bench.daemon.status()["warm_set"]
            r.update(refill_s=_refill_seconds(bench), warm_set=w["summary"],
                     refill_done_before_prompt=w["finished"] is not None and w["finished"] <= r["queued"])
            out["refilled"].append(r)
            _reboot(bench, "off")
            out["cold"].append(_first_prompt(bench, HEARTH))
            out["kept"].append(_first_prompt(bench, HEARTH))  # the segments of the last run stay
            for path in _model_files(bench):
                drop_page_cache(path)
            out["stock"].append(_first_prompt(bench, STOCK))
            warm_page_cache(bench.checkpoint)
            out["stock_warm"].append(_first_prompt(bench, STOCK))
    finally:
        bench.daemon.api("POST", "/v1/config", {"warm_set": "on"})
    return out


# ---- 12: a queue of 4 prompts over 2 checkpoints ----------------------------------------------------

def second_checkpoint(bench: Bench) -> Path:
    """A copy of the run's checkpoint beside it (made once): the queue's other model."""
    b = bench.checkpoint.with_name(CKPT_B)
    if not b.exists():
        part = b.with_name(f".{CKPT_B}.copying")
        shutil.copyfile(bench.checkpoint, part)
        os.replace(part, b)
    return b


def _queue_graph(side: str, model: str, seed: int) -> dict:
    g = graphs.txt2img(CKPT if model == "A" else CKPT_B, size=64, steps=QUEUE_STEPS, seed=seed,
                       prefix=f"queue-{model}")
    return graphs.to_stock(g) if side == STOCK else g


async def _run_queue(server: ComfyServer, prompts: list[dict], timeout: float = 1800) -> dict:
    """Queue every prompt at once; per prompt, the loader node's time and when it ended (websocket clock)."""
    import aiohttp

    messages: list[tuple[float, str, dict]] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}") as ws:
            t0 = time.perf_counter()
            ids = [server.post("/prompt", {"prompt": p, "client_id": server.client_id})["prompt_id"]
                   for p in prompts]
            left = set(ids)
            deadline = time.monotonic() + timeout
            while left:
                msg = await ws.receive(timeout=max(1.0, deadline - time.monotonic()))
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                doc = json.loads(msg.data)
                data = doc.get("data", {})
                messages.append((time.perf_counter(), doc["type"], data))
                if doc["type"] == "execution_error":
                    raise RuntimeError(f"{data.get('node_type')}: {data.get('exception_message')}")
                if doc["type"] == "executing" and data.get("node") is None and data.get("prompt_id") in left:
                    left.discard(data["prompt_id"])
    per = []
    for pid in ids:
        steps = [(t, d.get("node")) for t, k, d in messages if k == "executing" and d.get("prompt_id") == pid]
        nodes = {n: b - a for (a, n), (b, _) in pairwise(steps) if n is not None}
        per.append({"loader_s": nodes.get(LOADER_ID, 0.0), "end_s": steps[-1][0] - t0 if steps else None})
    loads = [d.get("status") for _, k, d in messages if k == "hearth.load" and d.get("kind") == "checkpoint"]
    return {"total_s": time.perf_counter() - t0, "prompts": per, "loads": loads}


def _one_queue(bench: Bench, side: str, prefetch: bool, b: Path) -> dict:
    bench.daemon.api("POST", "/v1/evict", {"all": True})
    bench.daemon.api("POST", "/v1/config", {"prefetch": prefetch})
    for path in (bench.checkpoint, b):
        drop_page_cache(path)
    prompts = [_queue_graph(side, m, seed=100 + i) for i, m in enumerate(QUEUE)]
    with bench.running(side) as server:
        result = asyncio.run(_run_queue(server, prompts))
    result["fills"] = bench.daemon.status()["stats"]["fills"]
    return result


def queue_prefetch(bench: Bench, repeats: int) -> dict:
    b = second_checkpoint(bench)
    out: dict = {"prefetch": [], "no_prefetch": [], "stock": []}
    try:
        for _ in range(repeats):
            out["prefetch"].append(_one_queue(bench, HEARTH, True, b))
            out["no_prefetch"].append(_one_queue(bench, HEARTH, False, b))
            out["stock"].append(_one_queue(bench, STOCK, True, b))
    finally:
        bench.daemon.api("POST", "/v1/config", {"prefetch": True})
        bench.daemon.api("POST", "/v1/evict", {"all": True})
        bench.warm_segments()  # what the next scenarios expect: the checkpoint and LoRAs cached, not B
    return out


# ---- 13: first sampler step with and without eager load ---------------------------------------------

def _first_step(bench: Bench, side: str, eager: str | None) -> dict:
    graph = txt2img_graph(side)
    if eager is not None:
        graph[LOADER_ID]["inputs"]["eager_load"] = eager
    warm_page_cache(bench.checkpoint)  # stock's file warm; Hearth's segment is warm regardless
    with bench.running(side) as server:
        run, wall = timed_run(server, graph)
    nodes = run.node_seconds()
    event = checkpoint_event(run) or {}
    return {"sampler_s": nodes.get(SAMPLER_ID), "loader_s": nodes.get(LOADER_ID), "prompt_s": wall,
            "status": event.get("status"), "eager": event.get("eager"), "eager_s": event.get("eager_seconds")}


def eager_first_step(bench: Bench, repeats: int) -> dict:
    bench.warm_segments()
    out: dict = {"stock": [], "lazy": [], "eager": []}
    for _ in range(repeats):
        out["stock"].append(_first_step(bench, STOCK, None))
        out["lazy"].append(_first_step(bench, HEARTH, "off"))
        out["eager"].append(_first_step(bench, HEARTH, "on"))
    return out


# ---- rows of the report -----------------------------------------------------------------------------

def rows(s: dict) -> list:
    """The report's rows of scenarios 11-13 (report.Row), from a run's JSON."""
    from .report import Row, _median, _ratio_target

    out = []
    if "11" in s:
        r = s["11"]
        t = {k: [x["prompt_s"] for x in r[k]] for k in r if k != "during"}  # "during" has its own fields
        refilled = Row("11", "reboot -> first prompt: warm set refilled", "s", t["stock"], t["refilled"],
                       chart="time")
        kept = _median(t["kept"])
        ratio = _median(t["refilled"]) / kept if kept else None
        refilled.target = "<= 1.10x segments kept"
        refilled.met = ratio is not None and ratio <= 1.10
        refilled.measure = f"{ratio:.2f}x kept" if ratio is not None else ""
        refilled.why = ("the first prompt after a reboot waited for a refill that had not finished when it was "
                        "queued" if not all(x["status"] == "hit" for x in r["refilled"]) else
                        "the first prompt's other nodes (text encoder, sampler, VAE) vary more than the loader")
        out += [refilled,
                Row("11", "reboot -> first prompt: warm set off", "s", t["stock"], t["cold"]),
                Row("11", "no reboot: first prompt, segments kept", "s", t["stock_warm"], t["kept"],
                    stock_is="page cache warm"),
                Row("11", "↳ warm set refill (daemon start -> done)", "s", None,
                    [x["refill_s"] for x in r["refilled"] if x["refill_s"] is not None])]
        if r.get("during"):
            during = Row("11", f"a running prompt ({DURING_STEPS} steps) while the warm set refills a checkpoint",
                         "s", [x["alone_s"] for x in r["during"]], [x["during_s"] for x in r["during"]],
                         stock_is="Hearth, no refill")
            out.append(_ratio_target(during, 1.10, "the refill's copy threads and the kernel's zeroing of new "
                                                   "tmpfs pages take CPU from the sampler on this 2-core machine "
                                                   "(idle I/O priority does not cover CPU)"))
    if "12" in s:
        r = s["12"]
        t = {k: [x["total_s"] for x in r[k]] for k in r}
        wait = {k: [sum(p["loader_s"] for p in x["prompts"]) for x in r[k]] for k in r}
        on = Row("12", "queue of 4 prompts over 2 checkpoints: prefetch on", "s", t["stock"], t["prefetch"],
                 chart="time")
        out += [on, Row("12", "↳ prefetch off", "s", t["stock"], t["no_prefetch"]),
                Row("12", "↳ loader nodes, all four: prefetch on", "s", wait["stock"], wait["prefetch"]),
                Row("12", "↳ loader nodes, all four: prefetch off", "s", wait["stock"], wait["no_prefetch"])]
    if "13" in s:
        r = s["13"]
        step = {k: [x["sampler_s"] for x in r[k]] for k in r}
        load = {k: [x["loader_s"] for x in r[k]] for k in r}
        out += [Row("13", "first sampler step: eager load off", "s", step["stock"], step["lazy"], chart="time"),
                Row("13", "first sampler step: eager load on", "s", step["stock"], step["eager"]),
                Row("13", "↳ loader node: eager load off", "s", load["stock"], load["lazy"]),
                Row("13", "↳ loader node: eager load on", "s", load["stock"], load["eager"])]
    return out


def notes(s: dict) -> list[str]:
    out = []
    if "11" in s:
        r = s["11"]
        out.append(f"scenario 11: first-prompt checkpoint loads after a reboot with the warm set "
                   f"{[x['status'] for x in r['refilled']]} (hits: the refill was done), without it "
                   f"{[x['status'] for x in r['cold']]}, segments kept {[x['status'] for x in r['kept']]}")
    if "12" in s:
        r = s["12"]
        out.append(f"scenario 12: Hearth's checkpoint loads with prefetch {[x['loads'] for x in r['prefetch']]}, "
                   f"without {[x['loads'] for x in r['no_prefetch']]}")
    if "13" in s:
        out.append(f"scenario 13: eager load ran as {[x['eager'] for x in s['13']['eager']]} in "
                   f"{[x['eager_s'] for x in s['13']['eager']]} s inside the loader")
    return out
