"""The example workflows as files (no ComfyUI needed): valid graphs that use the pack's nodes, and the
stock twins the image comparisons run against."""

from __future__ import annotations

from . import comfy_support  # noqa: F401  (puts the repository's bench/ on sys.path)
import pytest

from harness import graphs

NAMES = ["hearth_txt2img", "hearth_lora_stack"]


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_a_linked_graph_of_known_nodes(name):
    ui = graphs.load(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert "HearthCheckpointLoader" in {n["type"] for n in nodes.values()}
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind == nodes[dst]["inputs"][dst_slot]["type"]
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == len(ui["links"])


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_matches_its_ui_twin(name):
    ui, api = graphs.load(name), graphs.load(f"{name}_api")
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: n["class_type"] for k, n in api.items()}
    input_of_link = {i["link"]: i["name"] for n in ui["nodes"] for i in n["inputs"]}
    for link_id, src, src_slot, dst, _, _ in ui["links"]:
        assert api[str(dst)]["inputs"][input_of_link[link_id]] == [str(src), src_slot]


def test_stock_twin_chains_one_loraloader_per_used_slot():
    g = graphs.configure(graphs.load("hearth_lora_stack_api"), "m.safetensors",
                         [("a.safetensors", 1.0, 0.5), ("b.safetensors", 0.25, 0.0)])
    stock = graphs.to_stock(g)
    assert stock["1"]["class_type"] == "CheckpointLoaderSimple"
    assert "8" not in stock
    first, second = stock["8.1"]["inputs"], stock["8.2"]["inputs"]
    assert (first["model"], first["clip"], first["lora_name"]) == (["1", 0], ["1", 1], "a.safetensors")
    assert (second["model"], second["lora_name"], second["strength_model"]) == (["8.1", 0], "b.safetensors", 0.25)
    assert stock["5"]["inputs"]["model"] == ["8.2", 0]
    assert stock["2"]["inputs"]["clip"] == stock["3"]["inputs"]["clip"] == ["8.2", 1]


def test_stock_twin_of_an_empty_stack_wires_the_loader_straight_through():
    stock = graphs.to_stock(graphs.configure(graphs.load("hearth_lora_stack_api"), "m.safetensors", []))
    assert not any(n["class_type"] == "LoraLoader" for n in stock.values())
    assert stock["5"]["inputs"]["model"] == ["1", 0] and stock["2"]["inputs"]["clip"] == ["1", 1]
