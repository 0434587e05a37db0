"""Reading the models a workflow names (core/workflow.py), and `hearth preload --workflow` on a real daemon."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from comfyui_hearth.cli.workflow import locate
from comfyui_hearth.core.workflow import HEARTH_LOADERS, LOADERS, ModelRef, WorkflowError, models_in, read_workflow
from conftest import make_model

REPO = Path(__file__).resolve().parents[1]


def _names(refs: list[ModelRef]) -> list[tuple[str, str]]:
    return [(r.folder, r.name) for r in refs]


def test_the_pack_s_example_workflows_in_both_formats():
    for ui in sorted((REPO / "example_workflows").glob("*.json")):
        api = REPO / "harness" / "graphs" / f"{ui.stem}_api.json"
        from_ui, from_api = models_in(read_workflow(ui)), models_in(read_workflow(api))
        assert _names(from_ui) == _names(from_api) and from_ui, ui.name
    lora = models_in(read_workflow(REPO / "example_workflows" / "hearth_lora_stack.json"))
    assert _names(lora) == [("checkpoints", "v1-5-pruned-emaonly-fp16.safetensors"),
                            ("loras", "MoXinV1.safetensors")]  # the stack's row that is off loads nothing
    assert {(r.class_type, r.input) for r in lora} == {("HearthCheckpointLoader", "ckpt_name"),
                                                      ("HearthLoraSwapper", "loras")}
    old_slots = {"nodes": [{"id": 8, "type": "HearthLoraSwapper",  # the first version's four slots
                            "widgets_values": ["a.safetensors", 1, 1, "None", 1, 1, "b.safetensors", 1, 1,
                                               "None", 1, 1]}]}
    assert _names(models_in(old_slots)) == [("loras", "a.safetensors"), ("loras", "b.safetensors")]


def test_api_format_by_class_and_input_links_and_duplicates():
    prompt = {
        "1": {"class_type": "CheckpointLoader", "inputs": {"config_name": "v1.yaml", "ckpt_name": "a/b.safetensors"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5.safetensors", "type": "sd3"}},
        "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit.safetensors"}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},            # no file
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},      # no file
        "6": {"class_type": "PrimitiveString", "inputs": {"value": "style.safetensors"}},
        "7": {"class_type": "LoraLoader", "inputs": {"lora_name": ["6", 0], "model": ["1", 0], "clip": ["1", 1]}},
        "8": {"class_type": "LoraLoader", "inputs": {"lora_name": ["1", 0]}},          # a link to a loader: skipped
        "9": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a/b.safetensors"}},  # again
        "10": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "l.safetensors", "clip_name2": "g.sft",
                                                          "type": "sdxl"}},
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux.ckpt", "weight_dtype": "default"}},
        "12:3": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}},  # in a subgraph
        "13": {"class_type": "KSampler", "inputs": {"ckpt_name": "not-a-loader.safetensors"}},
    }
    refs = models_in(prompt)
    assert _names(refs) == [("checkpoints", "a/b.safetensors"), ("text_encoders", "t5.safetensors"),
                            ("clip_vision", "vit.safetensors"), ("loras", "style.safetensors"),
                            ("text_encoders", "l.safetensors"), ("text_encoders", "g.sft"),
                            ("diffusion_models", "flux.ckpt"), ("upscale_models", "4x.pth")]
    assert refs[0].node == "1" and refs[3].node == "7"
    assert _names(models_in({"prompt": prompt, "client_id": "x"})) == _names(refs)  # a POST /prompt body
    only_hearth = models_in({**prompt, "20": {"class_type": "HearthCheckpointLoader",
                                              "inputs": {"ckpt_name": "h.safetensors"}}}, HEARTH_LOADERS)
    assert _names(only_hearth) == [("checkpoints", "h.safetensors")]


def test_ui_format_widgets_subgraphs_and_modes():
    workflow = {
        "nodes": [
            {"id": 1, "type": "CheckpointLoader", "mode": 0, "widgets_values": ["v1.yaml", "c.safetensors"]},
            {"id": 2, "type": "LoraLoader", "mode": 4, "widgets_values": ["bypassed.safetensors", 1, 1]},
            {"id": 3, "type": "LoraLoader", "mode": 2, "widgets_values": ["muted.safetensors", 1, 1]},
            {"id": 4, "type": "QuadrupleCLIPLoader", "widgets_values": ["1.safetensors", "2.safetensors",
                                                                         "3.safetensors", "4.safetensors"]},
            {"id": 5, "type": "UNETLoader", "widgets_values": {"unet_name": "u.safetensors"}},
            {"id": 6, "type": "VAELoader", "widgets_values": []},
            {"id": 7, "type": "4f1c-subgraph-id", "widgets_values": []},
        ],
        "links": [],
        "definitions": {"subgraphs": [{"id": "4f1c-subgraph-id", "nodes": [
            {"id": 1, "type": "ControlNetLoader", "widgets_values": ["cn.safetensors"]}]}]},
    }
    assert _names(models_in(workflow)) == [
        ("checkpoints", "c.safetensors"), ("text_encoders", "1.safetensors"), ("text_encoders", "2.safetensors"),
        ("text_encoders", "3.safetensors"), ("text_encoders", "4.safetensors"),
        ("diffusion_models", "u.safetensors"), ("controlnet", "cn.safetensors")]


def test_every_loader_in_the_table_reads_its_widget_in_both_formats():
    for class_type, inputs in LOADERS.items():
        width = max(i for _, _, i in inputs) + 1
        values = [f"w{i}" for i in range(width)]
        for name, _, index in inputs:
            values[index] = f"{class_type}-{name}.safetensors"
        ui = models_in({"nodes": [{"id": 1, "type": class_type, "widgets_values": values}]})
        api = models_in({"1": {"class_type": class_type,
                               "inputs": {name: values[index] for name, _, index in inputs}}})
        assert _names(ui) == _names(api) == [(folder, f"{class_type}-{name}.safetensors")
                                             for name, folder, _ in inputs], class_type


def test_not_a_workflow(tmp_path):
    for doc in ([], {"a": 1}, {"nodes": "x"}, "text"):
        with pytest.raises(WorkflowError):
            models_in(doc)
    bad = tmp_path / "x.json"
    bad.write_bytes(b"\x89PNG")
    with pytest.raises(WorkflowError, match="not a JSON workflow"):
        read_workflow(bad)


def test_locate_prefers_the_folder_of_the_kind_and_says_when_ambiguous(tmp_path):
    comfy = tmp_path / "ComfyUI" / "models"
    a1111 = tmp_path / "webui" / "models"
    ckpt = make_model(comfy / "checkpoints" / "sd" / "m.safetensors")
    same_name_lora = make_model(comfy / "loras" / "sd" / "m.safetensors", seed=1)
    sd_a1111 = make_model(a1111 / "Stable-diffusion" / "x.safetensors", seed=2)
    twin = make_model(comfy / "checkpoints" / "x.safetensors", seed=3)
    roots = [str(comfy / "checkpoints"), str(comfy / "loras"), str(a1111)]
    found = locate(ModelRef("checkpoints", "sd/m.safetensors", "1", "CheckpointLoaderSimple", "ckpt_name"), roots)
    assert found.paths == [str(ckpt)]  # the loras root has a file of that name too: not a checkpoint folder
    found = locate(ModelRef("loras", "sd/m.safetensors", "1", "LoraLoader", "lora_name"), roots)
    assert found.paths == [str(same_name_lora)]
    found = locate(ModelRef("checkpoints", "x.safetensors", "1", "CheckpointLoaderSimple", "ckpt_name"), roots)
    assert sorted(found.paths) == sorted([str(sd_a1111), str(twin)])  # both checkpoint folders: ambiguous
    assert locate(ModelRef("loras", "x.safetensors", "1", "LoraLoader", "lora_name"), roots).paths == []
    assert locate(ModelRef("loras", "../checkpoints/x.safetensors", "1", "LoraLoader", "lora_name"),
                  roots).paths == []


def test_cli_preload_workflow_ui_and_api(daemon, tmp_path):
    d = daemon
    ckpt = make_model(d.models / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors", seed=1)
    ui = REPO / "example_workflows" / "hearth_lora_stack.json"
    r = d.cli("preload", "--workflow", str(ui))
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines() == ["loras/MoXinV1.safetensors"]  # the one it cannot find
    assert "1 model(s) of the workflow not found" in r.stderr
    assert {s["path"]: s["state"] for s in d.status()["segments"]} == {str(ckpt): "ready"}

    make_model(d.models / "loras" / "MoXinV1.safetensors", seed=3)
    api = tmp_path / "api.json"
    api.write_text((REPO / "harness" / "graphs" / "hearth_lora_stack_api.json").read_text())
    r = d.cli("preload", "--workflow", str(api))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert len(d.status()["segments"]) == 2

    second = tmp_path / "second" / "models"  # another allowed models folder with a checkpoint of that name
    make_model(second / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors", seed=4)
    d.ok("POST", "/v1/config", {"model_dirs": [str(second)]})
    r = d.cli("preload", "--workflow", str(ui))
    assert r.returncode == 0, r.stderr
    assert "checkpoints/v1-5-pruned-emaonly-fp16.safetensors is ambiguous" in r.stderr
    assert len(d.status()["segments"]) == 3

    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"hello": "world"}))
    r = d.cli("preload", "--workflow", str(notes))
    assert r.returncode == 1 and "not a ComfyUI workflow" in r.stderr
    r = d.cli("preload", "--workflow", str(tmp_path / "none.json"))
    assert r.returncode == 1 and "No such file" in r.stderr
    r = d.cli("preload")
    assert r.returncode == 2 and "give a PATH or --workflow FILE" in r.stderr
    assert os.path.isdir(d.models / "loras")
