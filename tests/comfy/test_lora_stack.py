"""The Hearth LoRA Swapper's stack of rows in a real ComfyUI: rows on and off give LoraLoader chains' pixels,
graphs saved with the first version's four slots still run (API) and load as rows (UI, in a real frontend),
and a malformed stack or a missing LoRA is refused before the prompt runs.

The browser cases drive ComfyUI's own frontend in headless Chromium (skipped, with the reason, without it):
the rows are the widget web/lora_stack.js gives the node's `loras` input; the prompt the frontend builds is
queued as the frontend's own, so its progress text comes back to the page.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from harness import REPO, graphs
from harness.browser import CHROMIUM, Browser
from harness.server import ComfyError, Run

from .comfy_support import CKPT, LORA_A, LORA_B, hearth_graph, set_setting

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def _row(lora: str, strength_model: float = 1.0, strength_clip: float = 1.0, on: bool = True) -> dict:
    return {"on": on, "lora": lora, "strength_model": strength_model, "strength_clip": strength_clip}


def _with_rows(rows: list, seed: int = 42) -> dict:
    g = hearth_graph([], seed=seed)
    g["8"]["inputs"]["loras"] = {"__value__": rows}
    return g


def test_rows_that_are_off_are_skipped_and_the_rest_chain_like_loraloaders(comfy, stock):
    rows = [_row(LORA_A, on=False), _row(LORA_B, 0.5, 0.7), _row(LORA_A, 0.8, 0.3)]
    run = comfy.run(_with_rows(rows))
    np.testing.assert_array_equal(run.pixels(), stock([(LORA_B, 0.5, 0.7), (LORA_A, 0.8, 0.3)]))
    assert [e["name"] for e in run.hearth_loads() if e["kind"] == "lora"] == [LORA_B, LORA_A]
    everything_off = comfy.run(_with_rows([_row(LORA_A, on=False), _row(LORA_B, on=False)]))
    np.testing.assert_array_equal(everything_off.pixels(), stock())  # the base model's image
    assert [e for e in everything_off.hearth_loads() if e["kind"] == "lora"] == []
    # and the node says so, rather than keep the text of its last load
    assert everything_off.progress_texts()["8"] == "Hearth: no LoRA applied: the model and CLIP pass through"


def test_a_graph_saved_with_the_four_fixed_slots_runs_as_before(comfy, stock):
    stack = [(LORA_A, 1.0, 1.0), (LORA_B, 0.5, 0.7)]
    old = graphs.legacy_stack(hearth_graph([]), stack)
    assert set(old["8"]["inputs"]) == {"model", "clip"} | {f"{k}_{i}" for i in range(1, 5)
                                                          for k in ("lora", "strength_model", "strength_clip")}
    np.testing.assert_array_equal(comfy.run(old).pixels(), stock(stack))


@pytest.mark.parametrize(("loras", "says"), [
    ([{"lora": LORA_A, "strength": 1.0}], "LoRA row 1: unknown field strength"),
    ([_row(LORA_A), {"on": "yes", "lora": LORA_B}], "LoRA row 2: on must be true or false"),
    ([_row(LORA_A, float("inf"))], "LoRA row 1: strength_model must be a number"),
    ([_row(LORA_A, 101.0)], "LoRA row 1: strength_model 101.0 is outside -100..100"),
    ([_row("nowhere.safetensors")], "LoRA not in the loras folders: nowhere.safetensors"),
    ({"lora": LORA_A}, "loras must be a list of rows"),
])
def test_a_bad_stack_is_refused_before_the_prompt_runs(comfy, loras, says):
    graph = _with_rows([])
    graph["8"]["inputs"]["loras"] = {"__value__": loras} if isinstance(loras, list) else loras
    with pytest.raises(ComfyError, match="prompt_outputs_failed_validation") as refused:
        comfy.run(graph)
    assert says in str(refused.value)


def test_a_missing_lora_in_a_row_that_is_off_does_not_stop_the_prompt(comfy, stock):
    run = comfy.run(_with_rows([_row("nowhere.safetensors", on=False)]))
    np.testing.assert_array_equal(run.pixels(), stock())


def test_the_old_slots_and_rows_together_are_refused(comfy):
    graph = graphs.legacy_stack(hearth_graph([]), [(LORA_A, 1.0, 1.0)])
    graph["8"]["inputs"]["loras"] = {"__value__": [_row(LORA_B)]}
    with pytest.raises(ComfyError, match="either as loras or as the old lora_1..lora_4 inputs, not both"):
        comfy.run(graph)


def test_the_node_shows_one_stack_input_and_keeps_the_old_slots_hidden(comfy):
    spec = comfy.get("/object_info/HearthLoraSwapper")["HearthLoraSwapper"]["input"]
    assert set(spec["required"]) == {"model", "clip"}
    assert set(spec["optional"]) == {"loras"} and spec["optional"]["loras"][0] == "HEARTH_LORA_STACK"
    assert {"lora_1", "strength_model_4", "strength_clip_4"} <= set(spec["hidden"])


# ---- in ComfyUI's frontend ----------------------------------------------------------------------------

def _legacy_ui_workflow(stack: list[tuple[str, float, float]]) -> dict:
    """The LoRA example as the first version saved it: four slots, 12 widget values; the tiny model."""
    ui = json.loads((REPO / "example_workflows" / "hearth_lora_stack.json").read_text())
    ui.pop("models", None)
    for node in ui["nodes"]:
        if node["type"] == "HearthLoraSwapper":
            slots = list(stack) + [("None", 1.0, 1.0)] * (4 - len(stack))
            node["widgets_values"] = [v for slot in slots for v in slot]
            node["properties"].pop("models", None)
        elif node["type"] == "HearthCheckpointLoader":
            node["widgets_values"][0] = CKPT
            node["properties"].pop("models", None)
        elif node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [64, 64]
        elif node["type"] == "KSampler":
            node["widgets_values"][0], node["widgets_values"][2] = 42, 4  # seed, steps: hearth_graph()'s
    return ui


STACK_JS = "app.graph.getNodeById(8).widgets.find((w) => w.name === 'loras')"
ROWS = f"JSON.parse(JSON.stringify({STACK_JS}.value))"
PROMPT_ROWS = "(async () => (await app.graphToPrompt()).output['8'].inputs)()"


def _open(browser: Browser, server, workflow: dict):
    page = browser.page(server.url)
    page.wait("!!(window.app?.graph && window.LiteGraph?.registered_node_types?.HearthLoraSwapper)", timeout=120,
              what="ComfyUI's frontend with the pack's nodes")
    page.eval(f"app.loadGraphData({json.dumps(workflow)})")
    page.wait(f"!!{STACK_JS}", what="the swapper's stack widget")
    return page


def _queue_from_page(page, server) -> Run:
    """Queue the prompt the frontend builds, as the frontend's own (its client id), and wait for it."""
    body = page.eval("""(async () => { const p = await app.graphToPrompt();
        return {prompt: p.output, client_id: (window.comfyAPI?.api?.api ?? app.api).clientId}; })()""")
    return server.finished(server.post("/prompt", body)["prompt_id"])


@needs_chromium
def test_a_four_slot_workflow_loads_as_rows_that_the_user_edits(comfy, stock, tmp_path):
    set_setting(comfy, "Comfy.TutorialCompleted", True)  # no templates browser over the canvas
    stack = [(LORA_A, 1.0, 1.0), (LORA_B, 0.5, 0.7)]
    with Browser(tmp_path / "profile", width=1600, height=1000) as browser:
        page = _open(browser, comfy, _legacy_ui_workflow(stack))
        want = [_row(LORA_A, 1.0, 1.0), _row(LORA_B, 0.5, 0.7)]
        assert page.eval(ROWS) == want
        assert page.eval(PROMPT_ROWS) == {"model": ["1", 0], "clip": ["1", 1], "loras": {"__value__": want}}
        saved = page.eval("app.graph.serialize().nodes.find((n) => n.id === 8).widgets_values")
        assert saved == [want]  # saved again, the node has the new shape

        # What the user does, with the mouse: turn row 1 off, add a row, change its strengths, move it up,
        # remove row 2 (LORA_B)
        page.eval("app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1; app.graph.setDirtyCanvas(true, true)")
        page.click(".hearth-lora-row[data-index='0'] .hearth-lora-on")
        assert page.eval(f"{STACK_JS}.value[0].on") is False
        page.click(".hearth-lora-add")
        page.wait(f"{STACK_JS}.value.length === 3", what="a third row")  # (it reads the LoRA list first)
        page.type(".hearth-lora-row[data-index='2'] .hearth-lora-model", "0.8", enter=True)
        page.type(".hearth-lora-row[data-index='2'] .hearth-lora-clip", "0.3", enter=True)
        page.select(".hearth-lora-row[data-index='2'] .hearth-lora-name", LORA_A)
        page.click(".hearth-lora-row[data-index='2'] .hearth-lora-up")
        page.click(".hearth-lora-row[data-index='2'] .hearth-lora-remove")
        want = [_row(LORA_A, 1.0, 1.0, on=False), _row(LORA_A, 0.8, 0.3)]
        assert page.eval(ROWS) == want  # (a click's handlers have run when the click returns)
        assert page.eval("document.querySelectorAll('.hearth-lora-row').length") == 2
        assert page.eval("document.querySelector(\".hearth-lora-row[data-index='0']\").dataset.on") == "false"

        run = _queue_from_page(page, comfy)
        np.testing.assert_array_equal(run.pixels(), stock([(LORA_A, 0.8, 0.3)]))
        # The node's status text reached the page: the frontend shows it in the node
        text = page.wait("app.graph.getNodeById(8).widgets.find((w) => w.name === '$$node-text-preview')?.value",
                         what="the swapper's progress text")
        assert text.startswith("Hearth: "), text
        assert not [e for e in page.errors if "hearth" in e.lower() or "lora_stack" in e], page.errors


@needs_chromium
def test_the_stack_survives_a_save_and_a_reload(comfy, tmp_path):
    set_setting(comfy, "Comfy.TutorialCompleted", True)
    with Browser(tmp_path / "profile", width=1600, height=1000) as browser:
        page = _open(browser, comfy, _legacy_ui_workflow([(LORA_B, 0.25, 0.5)]))
        more = [_row(LORA_A, 1.0, 0.0, on=False), _row("gone.safetensors", on=False)]  # a shared workflow's
        page.eval(f"{STACK_JS}.hearthSet([...{STACK_JS}.value, ...{json.dumps(more)}])")
        saved = page.eval("app.graph.serialize()")
        again = copy.deepcopy(saved)
        page.eval("app.graph.clear()")
        page.eval(f"app.loadGraphData({json.dumps(again)})")
        page.wait(f"!!{STACK_JS}", what="the reloaded stack")
        assert page.eval(ROWS) == [_row(LORA_B, 0.25, 0.5), *more]
        assert page.eval("document.querySelectorAll('.hearth-lora-row').length") == 3
        gone = ".hearth-lora-row[data-index='2']"
        page.wait(f"document.querySelector(\"{gone}\").dataset.missing === 'true'", what="the missing LoRA marked")
        assert page.text(f"{gone} .hearth-lora-name option:checked") == "gone.safetensors (missing)"
