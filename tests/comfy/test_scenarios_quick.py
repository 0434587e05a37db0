"""The scenario benchmark's --quick mode against the real ComfyUI: every scenario gives numbers, and the chart,
the JSON and the README text are written. Targets are not checked here (tiny model, one repeat, a CI machine).

The benchmark runs as its users run it, `python -m bench.scenarios`; its figures are read from what it wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from harness import REPO

# A figure as the README table prints it: not "-" (not measured), "nan" or negative.
FIGURE = re.compile(r"\d+(\.\d+)? (ms|s|GiB|GB/s)( \(.*\))?")


def measured_scenarios(readme: str) -> set[str]:
    """Scenarios with a row of README-results.md's table that has stock and Hearth figures (min and median)."""
    found = set()
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].isdigit() and all(FIGURE.fullmatch(c) for c in cells[2:6]):
            found.add(cells[0])
    return found


def test_quick_run_measures_every_scenario_and_draws_the_chart(comfy_checkout, tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.scenarios", "--quick", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    doc = json.loads((tmp_path / "scenarios.json").read_text())
    assert set(doc["scenarios"]) == {str(n) for n in range(1, 14)}

    readme = (tmp_path / "README-results.md").read_text()
    measured = measured_scenarios(readme)
    assert measured >= {"1", "2", "3", "4", "5", "6", "8", "9", "11", "12", "13"}, readme
    for n in ("7", "10"):  # CUDA; diffusers in HEARTH_BENCH_PYTHON: numbers, or the reason it was skipped
        assert n in measured or doc["scenarios"][n].get("skipped"), doc["scenarios"][n]

    s = doc["scenarios"]
    assert all(r["status"] == "hit" for n in ("1", "2", "5") for r in s[n]["hearth"]), "Hearth missed its warm segment"
    for side in ("stock", "hearth"):
        steps = s["4"][side]["steps"]
        assert all(x["loader_cached"] for x in steps), f"{side}: the base model was rebuilt on a LoRA switch"
        assert all(x["equals_base"] == (x["lora"] == "none") for x in steps), f"{side}: {steps}"
    assert all(s["6"]["hit"]), "the restarted daemon refilled instead of re-adopting"

    png = tmp_path / "scenarios.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bench/results/scenarios.png" in readme and "| 1 |" in readme
    assert "Hearth / stock" in out.stdout
