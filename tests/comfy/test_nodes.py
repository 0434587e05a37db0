"""The Hearth nodes in a real ComfyUI: same pixels as the stock nodes, cache hits across processes,
LoRA switches without reloads, in-place LoRA writes kept private, and degrade-don't-fail."""

from __future__ import annotations

import os
import time

import numpy as np

from harness import graphs
from harness.daemon import sha256

from .comfy_support import CKPT, LORA_A, LORA_B, free_cache, hearth_graph, start_comfy

STACK = [(LORA_A, 1.0, 1.0), (LORA_B, 0.5, 0.7)]


def checkpoint_event(run) -> dict:
    [event] = [e for e in run.hearth_loads() if e["kind"] == "checkpoint"]
    return event


def test_hearth_txt2img_gives_the_stock_image(comfy, stock):
    free_cache(comfy)  # the server is shared: an earlier module's same graph would leave the loader cached
    run = comfy.run(hearth_graph())
    image = run.pixels()
    assert image.std() > 1, "a flat image would prove nothing"
    np.testing.assert_array_equal(image, stock())  # bit-exact: the UNet computes in stock's dtype
    event = checkpoint_event(run)
    assert event["status"] in ("hit", "miss") and event["name"] == CKPT and event["node_id"] == "1"


def test_lora_stack_gives_the_stock_loraloader_image(comfy, stock):
    image = comfy.run(hearth_graph(STACK)).pixels()
    np.testing.assert_array_equal(image, stock(STACK))
    assert not np.array_equal(image, stock()), "the LoRAs changed nothing"


def test_switching_loras_reuses_the_base_model_and_reads_no_file(comfy, stock):
    switches = ([(LORA_B, 1.0, 1.0)], [(LORA_A, 0.8, 0.3)], [])
    for loras in switches:
        stock(loras or None)  # rendered first: a stock graph in between would replace the cached loader
    comfy.run(hearth_graph([(LORA_A, 1.0, 1.0)]))
    for loras in switches:
        run = comfy.run(hearth_graph(loras))
        assert "1" in run.events("execution_cached")[0]["nodes"], "the base model was loaded again"
        loads = run.hearth_loads()
        assert [e["kind"] for e in loads] == ["lora"] * len(loras)
        assert all(e["status"] in ("hit", "miss") for e in loads), loads  # from the segment
        np.testing.assert_array_equal(run.pixels(), stock(loras or None))  # no LoRA: the base image


def test_switching_back_reuses_the_patches_until_the_file_changes(comfy, models, stock):
    a, b = [(LORA_A, 1.0, 1.0)], [(LORA_B, 1.0, 1.0)]
    stock(a), stock(b)
    comfy.run(hearth_graph(a))
    comfy.run(hearth_graph(b))
    run = comfy.run(hearth_graph(a))
    assert [e["patches_reused"] for e in run.hearth_loads()] == [True], run.hearth_loads()
    np.testing.assert_array_equal(run.pixels(), stock(a))
    path = models.lora(LORA_B)
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # a new version of the file: a new segment key
    run = comfy.run(hearth_graph(b))
    loads = run.hearth_loads()
    assert [(e["status"], e["patches_reused"]) for e in loads] == [("miss", False)], loads
    np.testing.assert_array_equal(run.pixels(), stock(b))


def _with_hook_lora(graph: dict, lora: str) -> dict:
    """ComfyUI's hook LoRA (CreateHookLora + SetClipHooks): it patches weights in place while sampling."""
    graph = {**graph, "h1": {"class_type": "CreateHookLora",
                             "inputs": {"lora_name": lora, "strength_model": 1.0, "strength_clip": 1.0}},
             "h2": {"class_type": "SetClipHooks", "inputs": {"clip": ["1", 1], "apply_to_conds": True,
                                                             "schedule_clip": False, "hooks": ["h1", 0]}}}
    for node in graph.values():
        if node["class_type"] == "CLIPTextEncode":
            node["inputs"]["clip"] = ["h2", 0]
    return graph


def _anonymous_kib(pid: int, path) -> int:
    """Anonymous pages of every mapping of `path` in `pid`: the pages it wrote, copied on write.

    Not Private_Dirty: a tmpfs page mapped by one process alone counts as private dirty without any write.
    """
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0]:  # a mapping's header line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Anonymous:"):
                total += int(line.split()[1])
    return total


def test_in_place_lora_writes_never_reach_the_shared_segment(comfy, daemon, models, stock):
    # CLIP runs in fp16 as stored, so its weights are the segment's views, and the hook LoRA copies its
    # patched values into them (comfy.utils.copy_to_param) and its backups back after the run.
    hooked = _with_hook_lora(hearth_graph(), LORA_A)
    # Stock first: a stock run after ours would replace our cached model, and unmap the segment.
    stock_base, stock_hooked = stock(), comfy.run(graphs.to_stock(hooked)).pixels()
    assert not np.array_equal(stock_hooked, stock_base), "the hook LoRA changed nothing"
    comfy.run(hearth_graph())
    segment = daemon.segment(models.checkpoint(CKPT))
    before = sha256(segment)
    np.testing.assert_array_equal(comfy.run(hooked).pixels(), stock_hooked)
    assert _anonymous_kib(comfy.proc.pid, segment) > 0, "ComfyUI wrote no weight in place"
    assert sha256(segment) == before


def test_a_second_comfyui_process_gets_a_cache_hit(comfy_checkout, models, daemon, comfy, stock, tmp_path):
    comfy.run(hearth_graph())  # the first process has loaded the checkpoint, whatever ran before
    second = start_comfy(comfy_checkout, models, tmp_path, daemon.home)
    try:
        run = second.run(hearth_graph())
        assert checkpoint_event(run)["status"] == "hit"
        assert f"Hearth checkpoint {CKPT}: cache hit" in second.log()
        np.testing.assert_array_equal(run.pixels(), stock())
    finally:
        second.stop()


def test_daemon_down_loads_the_stock_way_and_says_why_once(comfy_checkout, models, stock, tmp_path):
    server = start_comfy(comfy_checkout, models, tmp_path / "comfy", tmp_path / "no-daemon-home")
    try:
        reasons = set()
        for loras in ([(LORA_A, 1.0, 1.0)], [(LORA_B, 1.0, 1.0)]):  # three loads: checkpoint, LoRA, LoRA
            run = server.run(hearth_graph(loras))
            np.testing.assert_array_equal(run.pixels(), stock(loras))
            assert {e["status"] for e in run.hearth_loads()} == {"fallback"}
            reasons |= {e["reason"] for e in run.hearth_loads()}
            # and the node says it (nodes/status.py: the reason, at most 160 characters, then the time)
            assert run.progress_texts()["8"].startswith(f"Hearth: not cached: {run.hearth_loads()[-1]['reason'][:20]}")
        [reason] = reasons
        assert reason and server.log().count(reason) == 1, server.log()
    finally:
        server.stop()
