"""The Hearth VRAM Budget node in a real ComfyUI on CPU: same image as without it, the explanation in /history,
the plan at the daemon and in `hearth status`, forced strategies refused with the reason; and each strategy
applied to a model inside a ComfyUI process (the GPU run skips, with the reason, where CUDA is absent)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from harness import graphs
from harness.checkout import comfy_env
from harness.pack import import_root
from harness.server import ComfyError

from .comfy_support import CKPT

WORKFLOW = "hearth_vram_budget"
BUDGET, PREVIEW, SAMPLER = "8", "9", "5"  # node ids in the workflow
GPU_STRATEGIES = ["full_gpu", "fp8", "partial", "sequential"]


def budget_graph(budget: str = "auto", strategy: str = "auto") -> dict:
    g = graphs.configure(graphs.load(f"{WORKFLOW}_api"), CKPT)
    g[BUDGET]["inputs"].update(budget_gb=budget, strategy=strategy)
    return g


def without_budget(graph: dict) -> dict:
    """The same graph with the node (and the preview of its text) taken out: the loader feeds KSampler."""
    g = {k: v for k, v in graph.items() if k not in (BUDGET, PREVIEW)}
    g[SAMPLER] = {**g[SAMPLER], "inputs": {**g[SAMPLER]["inputs"], "model": graph[BUDGET]["inputs"]["model"]}}
    return g


def explanation(run) -> str:
    [text] = run.history["outputs"][BUDGET]["text"]  # the node's own {"ui": {"text": ...}}
    assert run.history["outputs"][PREVIEW]["text"] == [text]  # the STRING output, shown by stock PreviewAny
    return text


@pytest.mark.parametrize("budget", ["auto", "2.5"])
def test_auto_plan_on_cpu_gives_the_image_of_the_graph_without_the_node(comfy, budget):
    run = comfy.run(budget_graph(budget))
    image = run.pixels()
    assert image.std() > 1, "a flat image would prove nothing"
    np.testing.assert_array_equal(image, comfy.run(without_budget(budget_graph(budget))).pixels())
    text = explanation(run)
    assert f"Hearth VRAM plan for {CKPT}" in text and f"budget {'auto' if budget == 'auto' else '2.5 GiB'}" in text
    assert "Chose cpu" in text and "no GPU" in text, text  # the plan and why not the better ones
    assert "load device is the CPU" in text and "CLIP, " in text and "VAE, " in text, text
    # The work read from the queued graph (EmptyLatentImage), sized with the model's own ComfyUI constants.
    assert "Workspace: " in text and "for 64x64, batch 1 (SD15 estimate)" in text, text


def test_the_plan_reaches_the_daemon_and_hearth_status(comfy, daemon):
    run = comfy.run(budget_graph("1.5", "cpu"))
    np.testing.assert_array_equal(run.pixels(), comfy.run(without_budget(budget_graph())).pixels())
    doc = daemon.api("GET", "/v1/strategy")
    assert {"strategy": doc["strategy"], "model": doc["model"], "requested": doc["requested"],
            "budget_bytes": doc["budget_bytes"], "device": doc["device"]} == {
        "strategy": "cpu", "model": CKPT, "requested": "cpu", "budget_bytes": int(1.5 * 2**30), "device": "cpu"}
    assert doc["vram_bytes"] == doc["resident_bytes"] == 0 and doc["ram_bytes"] > 0
    assert doc["warnings"] == ["CPU inference is slow: expect minutes per image"]
    assert explanation(run) == "\n".join([doc["explanation"], *(f"Warning: {w}" for w in doc["warnings"])])
    status = subprocess.run([sys.executable, "-m", "comfyui_hearth.cli", "status"], env=daemon.env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert f"last VRAM strategy: cpu ({CKPT})" in status.stdout


@pytest.mark.parametrize("strategy", GPU_STRATEGIES)
def test_a_forced_gpu_strategy_on_cpu_is_refused_with_the_reason(comfy, strategy):
    with pytest.raises(ComfyError) as refused:
        comfy.run(budget_graph(strategy=strategy))
    message = str(refused.value)
    assert f"{strategy} cannot run {CKPT} here: no GPU. What fits: cpu." in message
    assert "Set strategy to auto" in message


def test_a_budget_that_is_not_a_number_is_refused_before_the_run(comfy):
    with pytest.raises(ComfyError, match="give a number of GB"):
        comfy.run(budget_graph("lots"))


# Each strategy applied by `apply_plan` to a model built by ComfyUI, sampled in a child process that imports
# ComfyUI. On CPU the GPU strategies still go through their PREPARE_SAMPLING wrappers (ComfyUI's executor
# calls them), and fp8's object patches change the weights; on CUDA the residency is checked too.
CHILD = """
import json, sys
mode, ckpt = sys.argv[1:]
sys.argv = sys.argv[:1] + ([] if mode == "gpu" else ["--cpu"])
import comfy.options
comfy.options.enable_args_parsing()
import torch, comfy.sd, comfy.model_management as mm, nodes
from comfy.patcher_extension import WrappersMP
from comfyui_hearth.nodes.vram import WRAPPER_KEY, HearthVRAMBudget, _choose, apply_plan, work_from_prompt
from comfyui_hearth.planner import LADDER, Hardware, ModelSpec, Plan

model, clip = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=True)[:2]
encode = nodes.CLIPTextEncode().encode
pos, neg, latent = encode(clip, "a house")[0], encode(clip, "")[0], nodes.EmptyLatentImage().generate(64, 64)[0]

def sample(m):
    return nodes.common_ksampler(m, 42, 2, 7.0, "euler", "normal", pos, neg, latent)[0]["samples"].float()

def fp8_weights(m):
    return sum(p.dtype == torch.float8_e4m3fn for p in m.model.parameters())

reference, device = sample(model), model.load_device
say = lambda **kw: print(json.dumps(kw), flush=True)
for strategy in LADDER:
    resident = model.model_size() // 2 if strategy == "partial" else 0
    out, applied = apply_plan(model, Plan(strategy, 0, 0, resident, (), ""))
    got = sample(out)
    say(strategy=strategy, applied=applied, same=torch.equal(got, reference),
        diff=(got - reference).abs().max().item() / reference.abs().max().item(),
        fp8=fp8_weights(out), loaded=out.loaded_size(), size=out.model_size(), resident=resident,
        device=str(out.current_loaded_device()), lowvram=bool(out.model.model_lowvram),
        input_untouched=not model.object_patches and model.load_device == device
                        and not model.get_wrappers(WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY))
say(strategy="input again", same=torch.equal(sample(model), reference), fp8=fp8_weights(model))
auto = HearthVRAMBudget().apply(model, "auto", "auto")["result"]
say(strategy="node auto", text=auto[1], same=torch.equal(sample(auto[0]), reference))
chosen, warnings = _choose(ModelSpec(2**40), Hardware.profile(0, 2**30), None, "auto")  # 1 TiB in 1 GiB
say(strategy="nothing fits", plan=chosen, warnings=warnings)
# The work downstream of node 1's MODEL: a hires fix behind a LoRA (LatentUpscale keeps the batch of 2), an
# img2img latent (unknown), and a video sampled by another model (not this node's).
L = lambda node, out=0: [node, out]
graph = {"1": {"class_type": "HearthVRAMBudget", "inputs": {"model": L("0")}},
         "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": L("1")}},
         "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 2}},
         "4": {"class_type": "KSampler", "inputs": {"model": L("2"), "latent_image": L("3")}},
         "5": {"class_type": "LatentUpscale", "inputs": {"samples": L("4"), "width": 1024, "height": 1536}},
         "6": {"class_type": "KSampler", "inputs": {"model": L("2"), "latent_image": L("5")}},
         "7": {"class_type": "VAEEncode", "inputs": {"pixels": L("10"), "vae": L("0", 2)}},
         "8": {"class_type": "KSampler", "inputs": {"model": L("1"), "latent_image": L("7")}},
         "9": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 4096, "height": 4096, "length": 33,
                                                                  "batch_size": 1}},
         "11": {"class_type": "KSampler", "inputs": {"model": L("12"), "latent_image": L("9")}}}
img2img = {k: graph[k] for k in ("1", "7", "8")}
say(strategy="work", hires=work_from_prompt(graph, "1").__dict__, img2img=work_from_prompt(img2img, "1"),
    none=work_from_prompt(None, "1"))
"""


def run_child(checkout, ckpt, mode: str, home) -> dict[str, dict]:
    """The child's results by strategy; its HEARTH_HOME has no daemon, so the node reports nowhere."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), mode, str(ckpt)], cwd=checkout,
                          env=comfy_env(checkout, [import_root()], HEARTH_HOME=str(home)), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {d["strategy"]: d for d in map(json.loads, (x for x in proc.stdout.splitlines() if x.startswith("{")))}


def test_every_strategy_applies_to_a_cpu_model(comfy_checkout, models, tmp_path):
    got = run_child(comfy_checkout, models.checkpoint(CKPT), "cpu", tmp_path)
    for strategy in ("full_gpu", "partial", "sequential", "cpu"):  # on a CPU load device: ComfyUI's plain load
        assert got[strategy]["same"] and got[strategy]["fp8"] == 0, got[strategy]
        assert got[strategy]["input_untouched"] and got[strategy]["device"] == "cpu"
    fp8 = got["fp8"]
    assert fp8["fp8"] > 0 and not fp8["same"] and fp8["diff"] < 0.25, fp8  # rounded weights, near image
    assert "float8_e4m3fn" in fp8["applied"] and fp8["input_untouched"]
    assert got["input again"] == {"strategy": "input again", "same": True, "fp8": 0}  # object patches undone
    assert got["node auto"]["same"] and "Chose cpu" in got["node auto"]["text"]
    assert got["nothing fits"]["plan"] is None  # auto never fails a workflow: ComfyUI's own management
    assert "ComfyUI's own memory management stays in charge" in got["nothing fits"]["warnings"][0]
    assert got["work"] == {"strategy": "work", "hires": {"width": 1024, "height": 1536, "batch": 2, "frames": 1},
                           "img2img": None, "none": None}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU placement of the strategies not run")
def test_every_strategy_places_the_weights_on_a_gpu(comfy_checkout, models, tmp_path):
    got = run_child(comfy_checkout, models.checkpoint(CKPT), "gpu", tmp_path)
    full = got["full_gpu"]
    assert full["same"] and full["device"].startswith("cuda") and not full["lowvram"]
    assert full["loaded"] >= full["size"] * 0.99, full  # every weight in VRAM
    assert got["fp8"]["fp8"] > 0 and got["fp8"]["diff"] < 0.25 and not got["fp8"]["lowvram"], got["fp8"]
    for strategy in ("partial", "sequential"):
        g = got[strategy]
        # Modules that are no comfy.ops layer cannot be offloaded: allow 1 % of the model for them.
        assert g["lowvram"] and g["loaded"] <= g["resident"] + g["size"] // 100 and g["diff"] < 1e-2, g
    assert got["cpu"]["device"] == "cpu" and got["cpu"]["diff"] < 0.1, got["cpu"]
    assert got["input again"]["same"] and got["input again"]["fp8"] == 0
    assert "Chose full_gpu" in got["node auto"]["text"] and got["node auto"]["same"]
