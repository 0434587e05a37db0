"""The README's screenshots of the panel, taken by the tests' headless Chromium against a real daemon.

    python -m harness.screenshots [--out docs] [--comfyui CHECKOUT]

docs/panel.png: the daemon's own page, with sample model files (random weights, sparse, named as a user's
would be): one preloaded and pinned, one held by a running script, a LoRA loaded, one evicted by hand, a
budget set, and the VRAM plan `hearth plan` makes for a 6.5 GiB model on an 8 GiB GPU. With a ComfyUI
checkout (run it with that checkout's Python; default $HEARTH_COMFYUI): docs/sidebar.png, the Hearth tab in
ComfyUI after a real prompt through the Hearth loader and the VRAM Budget node (tiny SD1.5 built locally),
and docs/meter.png, the top bar's meter. Images are reduced to a 256-colour palette (Pillow): UI pictures
stay sharp at a fraction of the size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from . import REPO
from .browser import Browser
from .daemon import Daemon

SAMPLES = {  # name under the models folder -> size in MiB
    "checkpoints/sd15/dreamshaper_8_pruned.safetensors": 600,
    "checkpoints/sdxl/juggernautXL_v9_fp16.safetensors": 900,
    "loras/detail_tweaker.safetensors": 144,
    "loras/film_grain_v2.safetensors": 72,
}


def sparse_model(path: Path, mib: int) -> Path:
    """A valid .safetensors file of `mib` MiB made in no time: one U8 tensor left as a hole in the file."""
    size = mib << 20
    head = json.dumps({"model.weight": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    head += b" " * (-len(head) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        f.truncate(8 + len(head) + size)
    return path


def shrink(path: Path) -> Path:
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return path


def wait(pred, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def standalone(out: Path, work: Path) -> Path:
    models = work / "models"
    files = {name: sparse_model(models / name, mib) for name, mib in SAMPLES.items()}
    # /dev/shm itself, as a user's daemon has it: segment names carry a hash of HEARTH_HOME (no other daemon's
    # are touched), and everything is evicted at the end
    daemon = Daemon(work / "home", [models], shm_dir=Path("/dev/shm"))
    holder = None
    try:
        daemon.start()
        api = daemon.api
        api("POST", "/v1/config", {"budget": "4G"})
        ckpt = files["checkpoints/sd15/dreamshaper_8_pruned.safetensors"]
        xl = files["checkpoints/sdxl/juggernautXL_v9_fp16.safetensors"]
        lora, grain = files["loras/detail_tweaker.safetensors"], files["loras/film_grain_v2.safetensors"]
        api("POST", "/v1/pin", {"path": str(xl), "pinned": True})
        api("POST", "/v1/acquire", {"path": str(grain)})
        api("POST", "/v1/evict", {"path": str(grain)})
        # A script of the user's holds the checkpoint and a LoRA (as ComfyUI holds what it loaded)
        script = work / "txt2img.py"
        script.write_text(textwrap.dedent(f"""\
            import sys
            import comfyui_hearth
            kept = [comfyui_hearth.load_state_dict({str(ckpt)!r}), comfyui_hearth.load_state_dict({str(lora)!r})]
            kept.append(comfyui_hearth.load_state_dict({str(ckpt)!r}))  # a second load of it: a hit
            print("loaded", flush=True)
            sys.stdin.read()
        """))
        env = daemon.env  # PYTHONPATH finds this checkout as comfyui_hearth (pack.py)
        holder = subprocess.Popen([sys.executable, str(script)], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=work)
        assert holder.stdout.readline().strip() == "loaded"
        wait(lambda: all(s["state"] == "ready" for s in daemon.status()["segments"]) and len(
            daemon.status()["segments"]) == 3, "the fills")
        plan = json.loads(subprocess.run([sys.executable, "-m", "comfyui_hearth.cli", "plan", "6.5", "--vram", "8",
                                          "--ram", "32", "--json"], capture_output=True, text=True, check=True,
                                         env=env).stdout)
        report = {**plan["plan"], "model": "juggernautXL_v9_fp16.safetensors"}
        report["explanation"] = "\n".join(["Planned for an 8 GiB GPU (`hearth plan 6.5 --vram 8 --ram 32`).",
                                           report["explanation"]])
        api("POST", "/v1/strategy", report)
        token = (daemon.home / "token").read_text().strip()
        with Browser(work / "profile", width=1100, height=1400) as browser:
            port = json.loads((daemon.home / "daemon.json").read_text())["port"]
            page = browser.page(f"http://127.0.0.1:{port}/#token={token}")
            page.wait("document.querySelectorAll('.hearth-cache .hearth-tr[data-state=ready]').length === 3 && "
                      "!!document.querySelector('.hearth-inuse') && !!document.querySelector('.hearth-settings input')",
                      what="the panel")
            time.sleep(0.5)
            return shrink(page.screenshot(out / "panel.png", ".hearth-panel"))
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait(10)
        if daemon.proc is not None:
            daemon.api("POST", "/v1/evict", {"all": True})
        daemon.stop()


def in_comfy(out: Path, work: Path, checkout: Path) -> list[Path]:
    from . import graphs
    from .models import build_models
    from .server import ComfyServer

    models = build_models(checkout, work / "comfy-models", "tiny-sd15.safetensors", ["lora_a.safetensors"], rank=8,
                          unet_layers=8, clip_layers=12)
    daemon = Daemon(work / "comfy-home", [], shm_dir=Path("/dev/shm")).start()
    server = ComfyServer.with_hearth(checkout, work / "comfy", models.extra_model_paths, daemon.home)
    try:
        server.start()
        for key, value in {"Comfy.TutorialCompleted": True}.items():
            urllib.request.urlopen(urllib.request.Request(f"{server.url}/settings/{key}", method="POST",
                                                          data=json.dumps(value).encode()), timeout=10).read()
        with Browser(work / "comfy-profile", width=1280, height=1560) as browser:
            page = browser.page(server.url)
            page.wait("!!document.querySelector('.hearth-meter')", timeout=90, what="ComfyUI's frontend")
            page.click(".side-bar-button:has(.hearth-flame)")
            page.wait("!!document.querySelector('.hearth-panel .hearth-state.is-up')", what="the Hearth tab")
            server.run(graphs.configure(graphs.load("hearth_vram_budget_api"), "tiny-sd15.safetensors"))
            server.run(graphs.txt2img("tiny-sd15.safetensors", [("lora_a.safetensors", 1.0, 1.0)]))
            page.wait("document.querySelectorAll('.hearth-activity li').length >= 4 && "
                      "!!document.querySelector('.hearth-inuse')", what="the loads in the tab")
            time.sleep(1)
            # The tab down to its activity (the settings are on the standalone picture)
            panel = page.eval("""(() => { const r = document.querySelector('.hearth-panel').getBoundingClientRect();
                return [r.right, document.querySelector('.hearth-activity').getBoundingClientRect().bottom]; })()""")
            meter = page.eval("""(() => { const r = document.querySelector('.hearth-meter').getBoundingClientRect();
                return [r.left, r.bottom]; })()""")
            shots = [page.screenshot(out / "sidebar.png"), page.screenshot(out / "meter.png")]
            _crop(shots[0], (0, 0, int(panel[0]) + 2, int(panel[1]) + 12))
            _crop(shots[1], (int(meter[0]) - 24, 0, int(meter[0]) + 560, int(meter[1]) + 14))
            return [shrink(p) for p in shots]
    finally:
        server.stop()
        if daemon.proc is not None:
            daemon.api("POST", "/v1/evict", {"all": True})
        daemon.stop()


def _crop(path: Path, box: tuple[int, int, int, int]) -> None:
    from PIL import Image

    with Image.open(path) as img:
        left, top, right, bottom = box
        img.crop((max(0, left), max(0, top), min(right, img.width), min(bottom, img.height))).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("HEARTH_COMFYUI"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hearth-shots-") as tmp:
        made = [standalone(args.out, Path(tmp))]
        if args.comfyui:
            made += in_comfy(args.out, Path(tmp), args.comfyui)
    for p in made:
        print(f"{p} ({p.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
