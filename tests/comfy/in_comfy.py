"""Run inside a ComfyUI interpreter: `python in_comfy.py CASE ARGS_JSON`, with the checkout as working folder.

ComfyUI's modules are imported as main.py imports them (--cpu), then the pack as ComfyUI imports a custom
node (which installs the stock-loader hook); one case runs and prints its findings as JSON on the last line.
For what a server cannot show: where a parameter's memory lies, what a reload factory returns, the stock
path taken for files Hearth must leave alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path


def _comfy(folders: dict[str, list[str]]) -> None:
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import folder_paths

    for name, paths in folders.items():
        for p in paths:
            folder_paths.add_model_folder_path(name, p)
    # main.py imports its top-level `utils` package first: nodes.py puts comfy/ on sys.path, where
    # comfy/utils.py would pass for it later (and the server's import of utils.install_util fail).
    import utils.extra_config  # noqa: F401

    # isort: split
    import nodes  # noqa: F401 - ComfyUI's own nodes, imported before any pack as in main.py

    # The pack from its folder, as ComfyUI imports a custom node (a package named after nothing installed).
    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("comfyui_hearth", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_hearth"] = pack
    spec.loader.exec_module(pack)  # registers the pack's nodes and installs the hook


def _ranges(shm_dir: str) -> list[tuple[int, int]]:
    """Address ranges at which this process maps segment files (the daemon's files in `shm_dir`)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5].startswith(shm_dir + "/"):
                lo, hi = fields[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def _inside(module, shm_dir: str) -> float:
    """Share of a module's parameter bytes that lie in a segment's mapping: assigned, not copied."""
    ranges = _ranges(shm_dir)
    total = inside = 0
    for p in module.state_dict().values():
        n = p.numel() * p.element_size()
        total += n
        if any(lo <= p.data_ptr() < hi for lo, hi in ranges):
            inside += n
    return inside / total if total else 0.0


def reads(args: dict) -> dict:
    """load_torch_file on each file: served from a segment or read the stock way, and what it returned."""
    import torch

    import comfy.utils

    from comfyui_hearth.nodes import build

    out = {}
    for label, spec in args["reads"].items():
        kwargs = dict(spec.get("kwargs", {}))
        if "device" in kwargs:
            kwargs["device"] = torch.device(kwargs["device"])
        try:
            got = comfy.utils.load_torch_file(spec["path"], **kwargs)
        except Exception as e:  # noqa: BLE001 - the stock read's own error is a finding
            stock_error = None
            try:
                comfy.utils.load_torch_file.__wrapped__(spec["path"], **kwargs)
            except Exception as s:  # noqa: BLE001
                stock_error = type(s).__name__
            out[label] = {"raised": type(e).__name__, "stock_raised": stock_error}
            continue
        sd, metadata = got if kwargs.get("return_metadata") else (got, None)
        stock = comfy.utils.load_torch_file.__wrapped__(spec["path"], **kwargs)
        stock_sd, stock_metadata = stock if kwargs.get("return_metadata") else (stock, None)
        entry = {"shared": all(build.is_shared(t) for t in sd.values()), "keys": len(sd),
                 "equal": sd.keys() == stock_sd.keys() and all(torch.equal(sd[k], stock_sd[k]) for k in sd),
                 "metadata": dict(metadata) if metadata else metadata, "stock_metadata": stock_metadata}
        if metadata:
            metadata["written"] = "by the caller"  # loaders write into what they get
            again = comfy.utils.load_torch_file(spec["path"], **kwargs)[1]
            entry["metadata_after_write"] = again
        out[label] = entry
    return out


def assignment(args: dict) -> dict:
    """Stock builders under the hook: how much of each part lies in the segment, and the reload factories."""
    import torch

    import comfy.sd

    shm = args["shm_dir"]
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(args["checkpoint"], output_vae=True,
                                                                output_clip=True)
    out = {"unet": _inside(model.model, shm), "clip": _inside(clip.cond_stage_model, shm),
           "vae": _inside(vae.first_stage_model, shm)}
    unet = comfy.sd.load_diffusion_model(args["unet"])
    out["split_unet"] = _inside(unet.model, shm)
    te = comfy.sd.load_clip([args["clip"]], clip_type=comfy.sd.CLIPType.SD3)
    out["split_clip"] = _inside(te.cond_stage_model, shm)
    os.environ["HEARTH_STOCK_LOADERS"] = "0"  # read at every load: this one is ComfyUI's own
    off, _, _, _ = comfy.sd.load_checkpoint_guess_config(args["checkpoint"], output_vae=False, output_clip=False)
    out["unet_setting_off"] = _inside(off.model, shm)
    os.environ["HEARTH_STOCK_LOADERS"] = "1"

    def same_weights(a, b) -> bool:
        """Same keys, and the same values for every weight read from the file (a parameter no file holds,
        such as the SD1.5 checkpoint's absent CLIP text_projection, is uninitialised memory in every build)."""
        ranges = _ranges(shm)
        sa, sb = a.state_dict(), b.state_dict()
        from_file = [k for k, t in sa.items() if any(lo <= t.data_ptr() < hi for lo, hi in ranges)]
        return sa.keys() == sb.keys() and bool(from_file) and all(torch.equal(sa[k], sb[k]) for k in from_file)

    # ComfyUI 0.28's reload factories (cached_patcher_init): ComfyUI's own for the stock loader (through
    # the hook again), Hearth's for the Hearth Checkpoint Loader.
    from comfyui_hearth.nodes.checkpoint import HearthCheckpointLoader

    hearth_model, hearth_clip, hearth_vae = HearthCheckpointLoader().load_checkpoint(args["checkpoint_name"])
    factories = {}
    for label, patcher, reference in (("stock", model, model.model), ("hearth", hearth_model, hearth_model.model),
                                      ("hearth_clip", hearth_clip.patcher, hearth_clip.cond_stage_model),
                                      ("hearth_vae", hearth_vae.patcher, hearth_vae.first_stage_model)):
        init = getattr(patcher, "cached_patcher_init", "absent")
        if init == "absent":
            factories[label] = "absent"
            continue
        fresh = init[0](*init[1], disable_dynamic=True)
        if len(init) > 2:
            fresh = fresh[init[2]]
        factories[label] = {"type": type(fresh).__name__, "same": same_weights(fresh.model, reference),
                            "inside": _inside(fresh.model, shm), "is_dynamic": fresh.is_dynamic()}
    out["factories"] = factories
    import comfyui_version

    out["comfyui"] = comfyui_version.__version__
    return out


if __name__ == "__main__":
    case, args = sys.argv[1], json.loads(sys.argv[2])
    _comfy(args["folders"])
    print(json.dumps({"reads": reads, "assignment": assignment}[case](args)))
