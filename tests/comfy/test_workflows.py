"""The pack's example workflows: example_workflows/*.json are UI graphs of the pack's nodes that ComfyUI's
templates browser lists, each with its thumbnail (<name>.jpg, harness/thumbnails.py) and the metadata of the
models it names (where to download each, which folder it goes to: what the frontend's missing-models dialog
offers), and each has its API-format twin in harness/graphs/ that says the same and runs.

The file checks need no ComfyUI; the others use the session's ComfyUI (skipped, with the reason, without one).
Nothing is downloaded: the URLs are checked for their form, not fetched.
"""

from __future__ import annotations

import io
import json
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from comfyui_hearth.core.workflow import models_in
from harness import REPO, graphs, thumbnails
from harness.browser import CHROMIUM, Browser
from harness.server import PACK_NAME

from .comfy_support import CKPT, set_setting

EXAMPLES = REPO / "example_workflows"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
NOTES = ("Note", "MarkdownNote")  # the frontend's own, never queued: no API twin, not in /object_info
# Where the frontends' missing-models dialog downloads from (ComfyUI frontend 1.27's allowed sources)
SOURCES = ("https://huggingface.co/", "https://civitai.com/")


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def graph_nodes(ui: dict) -> list[dict]:
    return [n for n in ui["nodes"] if n["type"] not in NOTES]


def test_every_example_has_its_api_twin_and_no_api_graph_is_offered_as_an_example():
    assert NAMES, f"no example workflow in {EXAMPLES}"
    api = sorted(p.stem for p in graphs.HERE.glob("*.json"))
    assert api == [f"{name}_api" for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_example_is_a_linked_ui_graph_of_the_packs_nodes(name):
    ui = example(name)
    assert {"last_node_id", "last_link_id", "nodes", "links", "version"} <= ui.keys()
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "two nodes share an id"
    assert any(n["type"].startswith("Hearth") for n in nodes.values())
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind
        assert nodes[dst]["inputs"][dst_slot]["type"] in (kind, "*")  # "*": an input taking any type (PreviewAny)
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == max(link[0] for link in ui["links"])


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_has_the_examples_nodes_and_links(name):
    ui, api = example(name), graphs.load(f"{name}_api")
    assert {str(n["id"]): n["type"] for n in graph_nodes(ui)} == {k: n["class_type"] for k, n in api.items()}
    input_of_link = {i["link"]: i["name"] for n in ui["nodes"] for i in n["inputs"]}
    for link_id, src, src_slot, dst, _, _ in ui["links"]:
        assert api[str(dst)]["inputs"][input_of_link[link_id]] == [str(src), src_slot]


def _widget_names(node: dict) -> set[str]:
    """The file names a node's widgets hold: strings, and the LoRA stack's rows (on or off)."""
    out = set()
    for v in node.get("widgets_values") or []:
        rows = v if isinstance(v, list) else [v]
        out |= {r["lora"] if isinstance(r, dict) else r for r in rows if isinstance(r, (str, dict))}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_model_an_example_names_says_where_to_download_it(name):
    ui = example(name)
    listed = {(m["name"], m["directory"]): m for m in ui["models"]}
    assert len(listed) == len(ui["models"]), "a model listed twice"
    named = {(r.name, r.folder) for r in models_in(ui)}
    assert named and named <= listed.keys(), named - listed.keys()  # the frontend warns of each one missing
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    for ref in models_in(ui):  # ... and the node that names it says so too (the newer frontends ask it)
        assert listed[(ref.name, ref.folder)] in nodes[ref.node]["properties"]["models"], (ref.node, ref.name)
    on_nodes = [m for n in ui["nodes"] for m in n["properties"].get("models", [])]
    assert sorted(map(json.dumps, on_nodes)) == sorted(map(json.dumps, ui["models"]))
    for node in ui["nodes"]:
        for m in node["properties"].get("models", []):
            assert m["name"] in _widget_names(node), (node["type"], m["name"])  # the frontend filters by them
    for m in ui["models"]:
        assert m["name"].endswith(".safetensors") and m["url"].startswith(SOURCES), m
        url = urllib.parse.urlsplit(m["url"])
        if url.netloc == "huggingface.co":
            assert "/resolve/" in url.path and url.path.endswith("/" + m["name"]), m  # the file, not its page
        else:
            assert url.path.startswith("/api/download/models/"), m
            assert urllib.parse.parse_qs(url.query)["format"] == ["SafeTensor"], m


@pytest.mark.parametrize("name", NAMES)
def test_every_example_has_a_thumbnail_of_its_graph(name):
    path = EXAMPLES / f"{name}.jpg"
    assert path.is_file(), "no thumbnail: run python -m harness.thumbnails"
    stored = Image.open(path)
    assert stored.format == "JPEG" and stored.size == thumbnails.SIZE
    # Drawn from the graph as it is now (JPEG's loss aside): a changed example needs a new thumbnail
    fresh = Image.open(io.BytesIO(_jpeg(thumbnails.draw(name))))
    diff = np.abs(np.asarray(stored, dtype=np.int16) - np.asarray(fresh, dtype=np.int16)).mean()
    assert diff < 2, f"{path.name} is not the drawing of {name}.json: run python -m harness.thumbnails"


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88)
    return out.getvalue()


def test_stock_twin_chains_one_loraloader_per_row_that_is_on():
    g = graphs.txt2img("m.safetensors", [("a.safetensors", 1.0, 0.5), ("x.safetensors", 1.0, 1.0, False),
                                         ("b.safetensors", 0.25, 0.0)])
    stock = graphs.to_stock(g)
    assert stock["1"]["class_type"] == "CheckpointLoaderSimple"
    assert "8" not in stock
    first, second = stock["8.1"]["inputs"], stock["8.2"]["inputs"]
    assert (first["model"], first["clip"], first["lora_name"]) == (["1", 0], ["1", 1], "a.safetensors")
    assert (second["model"], second["lora_name"], second["strength_model"]) == (["8.1", 0], "b.safetensors", 0.25)
    assert stock["5"]["inputs"]["model"] == ["8.2", 0]
    assert stock["2"]["inputs"]["clip"] == stock["3"]["inputs"]["clip"] == ["8.2", 1]


def test_stock_twin_of_an_empty_stack_wires_the_loader_straight_through():
    stock = graphs.to_stock(graphs.txt2img("m.safetensors", []))
    assert not any(n["class_type"] == "LoraLoader" for n in stock.values())
    assert stock["5"]["inputs"]["model"] == ["1", 0] and stock["2"]["inputs"]["clip"] == ["1", 1]


def test_comfyui_lists_and_serves_the_examples_as_the_packs_templates(comfy):
    assert sorted(comfy.get("/workflow_templates")[PACK_NAME]) == NAMES  # no `_api` graph among them
    for name in NAMES:
        with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/{PACK_NAME}/{name}.json", timeout=30) as r:
            assert json.loads(r.read()) == example(name)
        with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/{PACK_NAME}/{name}.jpg", timeout=30) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read() == (EXAMPLES / f"{name}.jpg").read_bytes()


def test_the_models_go_to_folders_comfyui_has(comfy):
    folders = set(comfy.get("/models"))
    assert {m["directory"] for name in NAMES for m in example(name)["models"]} <= folders


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_the_frontend_offers_to_download_each_model_an_example_names(comfy, tmp_path):
    """In ComfyUI's own frontend (headless Chromium), opening an example whose models this ComfyUI lacks
    lists each of them with a download (0.3.64's and 0.13's dialog; 0.28's errors panel, opened as a user
    would). Requests to anywhere but this ComfyUI are blocked: the frontend asks the sources for file sizes."""
    set_setting(comfy, "Comfy.TutorialCompleted", True)  # no templates browser over the canvas
    with Browser(tmp_path / "profile", width=1600, height=1000) as browser:
        for name in NAMES:
            page = browser.page()
            page.send("Network.enable")
            page.send("Network.setBlockedURLs", urls=["*://huggingface.co/*", "*://civitai.com/*",
                                                      "*://*.huggingface.co/*", "*://*.civitai.com/*"])
            page.goto(comfy.url)
            page.wait("!!(window.app?.graph && window.LiteGraph?.registered_node_types?.HearthCheckpointLoader)",
                      timeout=120, what="ComfyUI's frontend with the pack's nodes")
            page.eval(f"app.loadGraphData({json.dumps(example(name))})")
            wanted = [m["name"] for m in example(name)["models"]]
            shown = f"""(() => {{
                const panel = [...document.querySelectorAll("button")].find((b) => /missing models/i.test(b.innerText));
                panel?.click();  // 0.28: the errors overlay's "Show missing models"
                const text = document.body.innerText;
                return {json.dumps(wanted)}.every((n) => text.includes(n)) && /Download/.test(text); }})()"""
            page.wait(shown, timeout=60, what=f"{name}'s models offered for download")


def test_examples_use_nodes_comfyui_knows_and_show_every_node_of_the_pack(comfy):
    info = comfy.get("/object_info")
    pack = {t for t, spec in info.items() if spec["python_module"] == f"custom_nodes.{PACK_NAME}"}
    used = {n["type"] for name in NAMES for n in graph_nodes(example(name))}
    assert used <= info.keys(), used - info.keys()
    assert pack and pack <= used, f"no example shows {pack - used}"
    for name in NAMES:
        assert {n["type"] for n in graph_nodes(example(name))} & pack, f"{name} uses none of the pack's nodes"


@pytest.mark.parametrize("name", NAMES)
def test_example_holds_the_widget_values_of_its_api_twin(comfy, name):
    info = comfy.get("/object_info")
    ui, api = example(name), graphs.load(f"{name}_api")
    for node in graph_nodes(ui):
        spec = info[node["type"]]["input"]
        widgets = [(k, rest[0] if rest else {}) for section in ("required", "optional")
                   for k, (kind, *rest) in spec.get(section, {}).items()
                   if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO",
                                                         "HEARTH_LORA_STACK")]  # web/lora_stack.js's widget
        values = iter(node["widgets_values"])
        for key, opts in widgets:
            value = api[str(node["id"])]["inputs"][key]
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]  # a list, as the frontend sends it (a bare list reads as a link)
            assert next(values) == value, (node["type"], key)
            if opts.get("control_after_generate"):
                next(values)  # the frontend's "fixed"/"randomize" companion of a seed
        assert next(values, None) is None, f"{node['type']} has more widget values than inputs"


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_runs_with_the_packs_nodes_and_saves_an_image(comfy, name):
    run = comfy.run(graphs.configure(graphs.load(f"{name}_api"), CKPT, seed=7))  # a seed no other test uses
    assert run.pixels().std() > 1, "a flat image would prove nothing"
    # The loader may come from ComfyUI's cache (an earlier test loaded the same checkpoint); what loads runs
    # through the daemon, not the stock fallback.
    assert all(e["status"] in ("hit", "miss") for e in run.hearth_loads()), run.hearth_loads()
