"""ComfyUI's own loader nodes through Hearth (Hearth.StockLoaders): stock pixels from shared segments.

Each graph runs on a ComfyUI as it comes (custom nodes disabled, the reference) and on one with the pack and
the setting on; images must be equal to the bit. The models: the session's tiny SD1.5 checkpoint and LoRAs
(CheckpointLoaderSimple, LoraLoader) and a split-file FLUX-layout set (harness/split_models.py: UNETLoader,
CLIPLoader, VAELoader). In-process cases (in_comfy.py) check where the built parameters live, the stock
path for what Hearth must leave alone, and ComfyUI 0.28's reload factories.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import graphs
from harness.checkout import comfy_env
from harness.daemon import Daemon
from harness.models import ModelFolder
from harness.server import ComfyServer
from harness.split_models import CLIP_TYPE, SplitFolder, build_split

from .comfy_support import CKPT, LORA_A, LORA_B, hearth_graph

HERE = Path(__file__).resolve().parent
STACK = [(LORA_A, 1.0, 1.0), (LORA_B, 0.5, 0.7)]
SPLIT_FOLDERS = ("diffusion_models", "text_encoders", "vae")


def split_graph(split: SplitFolder, seed: int = 1) -> dict:
    """txt2img the FLUX way: diffusion model, text encoder and VAE each from its own file."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": split.unet, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": split.clip, "type": CLIP_TYPE}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": split.vae}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a warm hearth", "clip": ["2", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "seed": seed,
            "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "split"}},
    }


@pytest.fixture(scope="module")
def split(comfy_checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> SplitFolder:
    return build_split(comfy_checkout, tmp_path_factory.mktemp("split-models"), "tiny")


@pytest.fixture(scope="module")
def yaml(models: ModelFolder, split: SplitFolder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One extra_model_paths file for both sets (JSON is YAML)."""
    doc = {"sd": {"base_path": str(models.root), "checkpoints": "checkpoints", "loras": "loras"},
           "split": {"base_path": str(split.root), **{f: f for f in SPLIT_FOLDERS}}}
    path = tmp_path_factory.mktemp("stock-loaders") / "extra_model_paths.yaml"
    path.write_text(json.dumps(doc))
    return path


START_S = 300  # a ComfyUI start takes 5-8 s alone, minutes on a machine shared with other work


def _started(server: ComfyServer) -> Iterator[ComfyServer]:
    server.start(timeout=START_S)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reference(comfy_checkout: Path, yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """ComfyUI as it comes: no custom node at all."""
    yield from _started(ComfyServer.stock(comfy_checkout, tmp_path_factory.mktemp("reference"), yaml))


@pytest.fixture(scope="module")
def hooked(comfy_checkout: Path, yaml: Path, daemon: Daemon,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    yield from _started(ComfyServer.with_hearth(comfy_checkout, tmp_path_factory.mktemp("hooked"), yaml,
                                                daemon.home, stock_loaders=True))


def _segments_mapped(pid: int, daemon: Daemon, files: list[Path]) -> dict[str, bool]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {f.name: str(daemon.segment(f)) in maps for f in files}


def test_checkpoint_and_lora_chain_give_stock_pixels_from_segments(reference, hooked, models, daemon):
    graph = graphs.to_stock(hearth_graph(STACK))
    expected = reference.run(graph).pixels()
    run = hooked.run(graph)
    np.testing.assert_array_equal(run.pixels(), expected)
    assert expected.std() > 1, "a flat image would prove nothing"
    loads = {(e["kind"], e["name"]): e["status"] for e in run.hearth_loads()}
    assert loads.keys() == {("checkpoints", CKPT), ("loras", LORA_A), ("loras", LORA_B)}, loads
    assert set(loads.values()) <= {"hit", "miss"}
    # Built by assignment: the cached MODEL/CLIP/VAE keep the checkpoint's segment mapped after the
    # prompt (copied weights would have let the views, and the mapping, go).
    files = [models.checkpoint(CKPT), models.lora(LORA_A), models.lora(LORA_B)]
    assert all(_segments_mapped(hooked.proc.pid, daemon, files).values())


def test_split_flux_files_give_stock_pixels_from_segments(reference, hooked, split, daemon):
    graph = split_graph(split)
    expected = reference.run(graph).pixels()
    run = hooked.run(graph)
    np.testing.assert_array_equal(run.pixels(), expected)
    assert expected.std() > 1
    loads = {(e["kind"], e["name"]) for e in run.hearth_loads()}
    assert loads == {("diffusion_models", split.unet), ("text_encoders", split.clip), ("vae", split.vae)}
    mapped = _segments_mapped(hooked.proc.pid, daemon, split.files)
    # 0.3.64 casts the VAE with .to(dtype) after its load (a copy, as in stock), so its views go; later
    # releases keep the VAE's weights assigned (ComfyUI's ops cast per call).
    if _release(hooked) < (0, 13):
        mapped.pop(split.vae)
    assert all(mapped.values()), mapped


def _release(server: ComfyServer) -> tuple[int, ...]:
    version = server.get("/system_stats")["system"]["comfyui_version"]
    return tuple(int(x) for x in version.split(".")[:2])


def test_a_lora_chain_switching_back_reuses_its_patches(reference, hooked):
    a = graphs.to_stock(hearth_graph([(LORA_A, 1.0, 1.0)], seed=5))
    b = graphs.to_stock(hearth_graph([(LORA_B, 1.0, 1.0)], seed=5))
    expected_a, expected_b = reference.run(a).pixels(), reference.run(b).pixels()
    hooked.run(a)
    np.testing.assert_array_equal(hooked.run(b).pixels(), expected_b)
    before = hooked.log().count("patches reused")
    run = hooked.run(a)
    np.testing.assert_array_equal(run.pixels(), expected_a)
    assert [e["kind"] for e in run.hearth_loads()] == ["loras"]  # the base stayed cached
    assert hooked.log().count("patches reused") == before + 1, hooked.log()[-2000:]


def test_the_setting_in_comfyuis_settings_applies_to_the_next_load(comfy_checkout, yaml, daemon, split,
                                                                  reference, tmp_path):
    base = tmp_path / "comfy"
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Hearth.StockLoaders": False}))
    env = {"HEARTH_HOME": str(daemon.home), "HEARTH_DISABLE": None, "HEARTH_STOCK_LOADERS": None}
    server = ComfyServer(comfy_checkout, base, yaml, env).start(timeout=START_S)
    try:
        graph = split_graph(split, seed=3)
        run = server.run(graph)
        assert run.hearth_loads() == []  # off: ComfyUI's own reads
        np.testing.assert_array_equal(run.pixels(), reference.run(graph).pixels())
        # What the settings dialog sends (ComfyUI answers 200 with no body).
        request = urllib.request.Request(f"{server.url}/settings/Hearth.StockLoaders", data=b"true",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        sd = graphs.to_stock(hearth_graph())
        run = server.run(sd)
        assert [e["kind"] for e in run.hearth_loads()] == ["checkpoints"]
        np.testing.assert_array_equal(run.pixels(), reference.run(sd).pixels())
    finally:
        server.stop()


def _in_comfy(checkout: Path, case: str, args: dict, hearth_home: Path) -> dict:
    env = comfy_env(checkout, HEARTH_HOME=str(hearth_home), HEARTH_DISABLE=None, HEARTH_STOCK_LOADERS="1")
    done = subprocess.run([sys.executable, str(HERE / "in_comfy.py"), case, json.dumps(args)], cwd=checkout,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _folders(models: ModelFolder, split: SplitFolder) -> dict[str, list[str]]:
    return {"checkpoints": [str(models.root / "checkpoints")], "loras": [str(models.root / "loras")],
            **{f: [str(split.root / f)] for f in SPLIT_FOLDERS}}


def test_what_hearth_leaves_alone_is_read_the_stock_way(comfy_checkout, models, split, daemon, tmp_path):
    lora = models.lora(LORA_A)
    outside = tmp_path / "elsewhere" / LORA_A
    outside.parent.mkdir()
    outside.write_bytes(lora.read_bytes())
    linked = models.root / "loras" / "linked-outside.safetensors"  # a link in the folder to a file outside
    linked.symlink_to(outside)
    pickle = models.root / "loras" / "weights.pt"
    torch.save({"w": torch.arange(6.0)}, pickle)
    vae = split.path("vae", split.vae)
    try:
        found = _in_comfy(comfy_checkout, "reads", {"folders": _folders(models, split), "reads": {
            "in_folder": {"path": str(lora), "kwargs": {"safe_load": True}},
            "cpu_device": {"path": str(lora), "kwargs": {"device": "cpu"}},
            "metadata": {"path": str(vae), "kwargs": {"return_metadata": True}},
            "outside": {"path": str(outside)},
            "link_to_outside": {"path": str(linked)},
            "pickle": {"path": str(pickle), "kwargs": {"safe_load": True}},
            "meta_device": {"path": str(lora), "kwargs": {"device": "meta"}},
        }}, daemon.home)
    finally:
        linked.unlink()
        pickle.unlink()
    for label in ("in_folder", "cpu_device", "metadata"):
        assert found[label]["shared"] and found[label]["equal"], (label, found[label])
    for label in ("outside", "link_to_outside", "pickle"):
        assert not found[label]["shared"] and found[label]["equal"], (label, found[label])
    meta = found["metadata"]
    assert meta["metadata"] == meta["stock_metadata"] and "hearth_test_model" in meta["metadata"]
    assert meta["metadata_after_write"] == meta["stock_metadata"], "a caller's write reached the cached header"
    # Not the CPU: ComfyUI's own read, whatever it does with that device (here: the same outcome as stock).
    device = found["meta_device"]
    assert device.get("raised") == device.get("stock_raised") if "raised" in device else not device["shared"]


def test_stock_builders_assign_the_segment_and_reload_factories_go_through_hearth(comfy_checkout, models, split,
                                                                                   daemon):
    found = _in_comfy(comfy_checkout, "assignment", {
        "folders": _folders(models, split), "checkpoint": str(models.checkpoint(CKPT)), "checkpoint_name": CKPT,
        "unet": str(split.path("diffusion_models", split.unet)), "clip": str(split.path("text_encoders", split.clip)),
        "shm_dir": str(daemon.shm_dir)}, daemon.home)
    # UNet, CLIP and VAE (TAESD) of the checkpoint, the FLUX model and CLIP-L: their weights are the
    # segments' pages, not copies (what is left are ComfyUI's own buffers, absent from the files: position
    # ids, sigma tables, well under 1 %); with the setting off, ComfyUI's own copy.
    for part in ("unet", "clip", "split_unet", "split_clip"):
        assert found[part] > 0.99, (part, found)
    # 0.3.64 builds TAESD from plain torch convolutions and casts it with .to(dtype) after the load: a copy
    # there (5 MB), as in stock; later releases build it from ComfyUI's ops, which keep it assigned.
    if tuple(int(x) for x in found["comfyui"].split(".")[:2]) >= (0, 13):
        assert found["vae"] > 0.99, found
    assert found["unet_setting_off"] == 0.0
    factories = found["factories"]
    # 0.28 has reload factories (0.3.64 and 0.13 have none): where ComfyUI's loaders set one, Hearth's
    # loader does too, and every one reloads through Hearth with the classic patcher.
    assert len({f == "absent" for f in factories.values()}) == 1, factories
    for label, factory in factories.items():
        if factory != "absent":
            assert factory["same"] and factory["inside"] > 0.99 and not factory["is_dynamic"], (label, factory)
