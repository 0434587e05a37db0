"""Hearth VRAM Budget: plan how MODEL runs on this machine (planner/) and apply the plan through ComfyUI.

What each strategy does to a clone of MODEL (the input is never changed; a built model cannot be rebuilt,
so everything goes through the ModelPatcher's own options and ComfyUI's loader):

    full_gpu    a PREPARE_SAMPLING wrapper passes `force_full_load=True` to `sampler_helpers.prepare_sampling`,
                so `model_management.load_models_gpu` puts every weight in VRAM (no lowvram split).
    fp8         Linear/Conv weights become float8_e4m3fn copies, made in RAM now and installed as object
                patches (`ModelPatcher.add_object_patch`, undone by ComfyUI at unpatch); the compute dtype is
                kept (`set_model_compute_dtype`, per-op casts as UNETLoader's fp8 weight_dtype gives); loaded
                in full as full_gpu. Biases and norms stay 16-bit.
    partial     ComfyUI loads as usual, then a PREPARE_SAMPLING wrapper gives VRAM back with
                `ModelPatcher.partially_unload` (what `free_memory` uses when another model needs room) until
                at most the plan's resident bytes stay; the rest is cast to the GPU per layer at every step.
    sequential  the same with nothing resident: ComfyUI's --novram behaviour for this model only.
    cpu         the clone's load and offload devices are the CPU, so ComfyUI samples there, computing in the
                dtype `model_management.unet_manual_cast` picks for the CPU. On a CPU-only ComfyUI: no change.

A forced strategy that cannot run here is refused with the planner's reason (a user who forces one wants it
or to know why not); `auto` never fails a workflow: when nothing fits by Hearth's estimate, or the model is
under ComfyUI's Dynamic VRAM (which loads on demand by itself), MODEL passes through and the text says so.

What the plan is made from: the model's bytes, dtype and largest tensor (its state dict), its family's
workspace constants (the live model's `memory_usage_factor` and latent format), this machine as ComfyUI
sees it, and the work. A MODEL-only node is handed no latent, so the work is read from the queued graph
(the hidden PROMPT): samplers downstream of this node's MODEL, their `latent_image` followed back to a node
with literal width and height (EmptyLatentImage, EmptySD3LatentImage, the empty video latents, LatentUpscale:
batch_size and length when given), the largest if several. A latent from an image (VAEEncode) or a link the
graph computes stays unknown, and the planner assumes one 1024x1024 image (it says so). The ComfyUI functions
that differ across releases are called through comfy_features.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TypeGuard

import torch

import comfy.model_management as mm
import comfy.patcher_extension
import comfy.utils

from ..client import pinning, report_strategy
from ..core.home import shm_space
from ..core.sizes import GiB, format_size, parse_size
from ..planner import LADDER, Family, Hardware, ModelSpec, Plan, PlanImpossible, Work, plan
from ..planner.detect import BF16_MIN_CC, FP8_MIN_CC, Accelerator
from . import comfy_features

log = logging.getLogger("hearth.nodes")

WRAPPER_KEY = "hearth.vram_budget"
_CPU = torch.device("cpu")
_WIDE = (torch.float16, torch.bfloat16, torch.float32)

_APPLIED = {
    "full_gpu": "ComfyUI loads every weight into VRAM before sampling (load_models_gpu, force_full_load).",
    "fp8": ("Linear and convolution weights are stored as float8_e4m3fn copies made in RAM ({fp8}) and "
            "computed in {compute}; ComfyUI loads all of them into VRAM (force_full_load)."),
    "partial": ("ComfyUI loads the model as usual, then offloads weights (ModelPatcher.partially_unload) "
                "until at most {resident} stay in VRAM; the rest is copied to the GPU layer by layer at every step."),
    "sequential": ("ComfyUI keeps no weights in VRAM between steps (ModelPatcher.partially_unload of all of "
                   "them): every layer is copied to the GPU when it runs."),
    "cpu": "The model's load device is the CPU: ComfyUI samples on the CPU, computing in {compute}.",
}


def parse_budget(text: str) -> int | None:
    """'auto' (or empty) -> None; '6', '6.5', '6G', '6 GB', '512M' -> bytes (a bare number is GB, as ComfyUI's
    --reserve-vram counts: 2**30)."""
    if text.strip().lower() in ("", "auto"):
        return None
    try:
        return parse_size(text, unit=GiB)
    except ValueError:
        raise ValueError(f"VRAM budget {text!r}: give a number of GB (e.g. 6 or 7.5) or auto") from None


class HearthVRAMBudget:
    """Picks (or checks) a VRAM strategy for MODEL under a budget and returns a clone that runs that way."""

    CATEGORY = "Hearth"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "explanation")
    OUTPUT_TOOLTIPS = ("The model, set up to run with the chosen strategy.",
                       "Which strategy, why not the better ones, and what it does in ComfyUI.")
    FUNCTION = "apply"
    DESCRIPTION = ("Plans how the diffusion model runs on this machine (full in VRAM, FP8, partly offloaded, "
                   "layer by layer, or on the CPU) under a VRAM budget, applies it through ComfyUI's own "
                   "memory management and explains the choice.")
    SEARCH_ALIASES = ["hearth", "vram", "budget", "lowvram", "offload", "fp8", "memory"]

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to plan for."}),
                "budget_gb": ("STRING", {"default": "auto", "tooltip":
                              "Most VRAM the model may use, in GB, or auto: all free VRAM less 1 GB reserve."}),
                "strategy": (["auto", *LADDER], {"default": "auto", "tooltip":
                             "auto: the best that fits. Any other is used as asked, or refused with the reason."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Sized and planned too (advice: ComfyUI loads it by its own rules)."}),
                "vae": ("VAE", {"tooltip": "Sized and planned too (advice: ComfyUI loads it by its own rules)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, budget_gb: str | None = None):
        try:
            if budget_gb is not None:  # None: linked from another node, checked when this one runs
                parse_budget(budget_gb)
        except ValueError as e:
            return str(e)
        return True

    def apply(self, model, budget_gb: str, strategy: str, clip=None, vae=None, unique_id: str | None = None,
              prompt: dict | None = None) -> dict:
        budget = parse_budget(budget_gb)
        dynamic = comfy_features.is_dynamic(model)
        if dynamic and strategy != "auto":
            raise PlanImpossible(f"Hearth VRAM Budget: {strategy} cannot be applied to a model under ComfyUI's "
                                 "Dynamic VRAM (--fast dynamic_vram), which loads weights on demand itself. "
                                 "Set strategy to auto, or start ComfyUI without dynamic_vram.")
        hardware = _hardware(model)
        spec = _spec(model.model, "diffusion", _source_name(prompt, unique_id) or _architecture(model),
                     _family(model))
        work = work_from_prompt(prompt, unique_id)
        chosen, warnings = _choose(spec, hardware, budget, strategy, work)
        out, applied = model, ""
        if chosen is not None and dynamic:
            warnings.append(f"ComfyUI's Dynamic VRAM loads this model on demand; the {chosen.strategy} plan is "
                            "advice only and MODEL is unchanged.")
        elif chosen is not None:
            out, applied = apply_plan(model, chosen)
        about = "\n".join([
            f"Hearth VRAM plan for {spec.name} ({format_size(spec.weights_bytes)} of {8 * spec.dtype_bytes}-bit "
            f"weights) on {model.load_device}, budget {'auto' if budget is None else format_size(budget)}, "
            f"strategy {strategy}.",
            chosen.explanation if chosen else "No plan.",
            *([f"In ComfyUI: {applied}"] if applied else []),
            *(_advice(label, part, hardware, budget) for label, part in (("CLIP", clip), ("VAE", vae)) if part)])
        text = "\n".join([about, *(f"Warning: {w}" for w in warnings)])
        done = chosen.strategy if chosen is not None and out is not model else "none"
        log.info("Hearth VRAM strategy for %s: %s (asked %s)", spec.name, done, strategy)
        # The panel shows the explanation and the warnings apart; the STRING output carries both.
        report_strategy({"vram_bytes": 0, "ram_bytes": 0, "resident_bytes": 0,
                         **(chosen.to_dict() if chosen else {}),
                         "strategy": done, "planned": chosen and chosen.strategy, "requested": strategy,
                         "model": spec.name, "architecture": _architecture(model),
                         "weights_bytes": spec.weights_bytes, "budget_bytes": budget,
                         "device": str(model.load_device), "explanation": about, "warnings": warnings,
                         "pinning": pinning.status()})
        return {"ui": {"text": [text]}, "result": (out, text)}


def _choose(spec: ModelSpec, hardware: Hardware, budget: int | None, strategy: str,
            work: Work | None = None) -> tuple[Plan | None, list[str]]:
    """The plan and its warnings; None when `auto` finds nothing that fits. A forced misfit raises."""
    try:
        chosen = plan(spec, hardware, budget, strategy=strategy, work=work)
    except PlanImpossible as e:
        if strategy != "auto":
            raise PlanImpossible(f"Hearth VRAM Budget: {e} Set strategy to auto to let Hearth choose.",
                                 e.alternatives) from None
        return None, [f"{e} ComfyUI's own memory management stays in charge."]
    return chosen, list(chosen.warnings)


def apply_plan(model, chosen: Plan) -> tuple[object, str]:
    """A clone of `model` (a ModelPatcher) set up to run as `chosen` says, and what was done, in words."""
    out = model.clone()
    out.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY)  # chained nodes
    s = chosen.strategy
    details = {"resident": format_size(chosen.resident_bytes)}
    if s == "cpu":
        out.load_device = out.offload_device = _CPU
        weight = out.model.get_dtype()
        compute = mm.unet_manual_cast(weight, _CPU, out.model.model_config.supported_inference_dtypes) or weight
        if compute != (out.model.manual_cast_dtype or weight):  # built for a GPU: compute as ComfyUI does on CPU
            out.set_model_compute_dtype(compute)
        details["compute"] = str(compute).removeprefix("torch.")
    elif s in ("full_gpu", "fp8"):
        if s == "fp8":
            details.update(_store_fp8(out))
        out.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, _load_fully)
    else:  # partial, sequential
        out.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY,
                                 functools.partial(_keep_resident, chosen.resident_bytes))
    return out, _APPLIED[s].format(**details)


def _load_fully(executor, model, *args, **kwargs):
    """PREPARE_SAMPLING wrapper (full_gpu, fp8): ComfyUI's own load, told not to split the model."""
    _pin_views(model, args[1] if len(args) > 1 else kwargs.get("conds"))
    return comfy_features.prepare_fully_loaded(executor, model, *args, **kwargs)


def _keep_resident(resident: int, executor, model, *args, **kwargs):
    """PREPARE_SAMPLING wrapper: ComfyUI's own load, then weights offloaded until `resident` bytes remain.

    ComfyUI's loader takes no per-model weight limit, so each run it may first load what its own rules allow
    (never more than it would without this node) and the excess goes back before the first step.
    """
    _pin_views(model, args[1] if len(args) > 1 else kwargs.get("conds"))
    result = executor(model, *args, **kwargs)
    excess = model.loaded_size() - resident
    if excess > 0 and model.current_loaded_device() == model.load_device != _CPU:
        model.partially_unload(model.offload_device, excess)
    return result


def _pin_views(model, conds) -> None:
    """Before ComfyUI loads `model` on a CUDA device: its Hearth views registered read-only for CUDA
    (client/pinning.py), so copies to the GPU read page-locked memory and ComfyUI's own pin_memory, which
    would pin them writable and so copy every page, skips them. Not when this run writes weights in place
    (hooks, weight_inplace_update): a registered page written on the CPU would leave the GPU reading the old
    one, so such a run unregisters them instead. Pages written since an earlier registration undo it too."""
    if model.load_device.type != "cuda":
        return
    try:
        views = list(model.model.state_dict().values())
        pinning.verify_views(views)
        writer = _writes_in_place(model, conds)
        if writer:
            pinning.unregister_views(views, f"this run writes weights in place ({writer})")
        else:
            pinning.register_views(views)
    except Exception:  # pinning only speeds copies up; the prompt must run without it
        log.exception("Hearth: pinning the model's views failed; ComfyUI copies them as usual")


def _writes_in_place(patcher, conds) -> str | None:
    """What in this sampling run writes into the model's weights in place, if anything (ComfyUI's writers:
    the hooks path's copy_to_param, a patcher made with weight_inplace_update)."""
    if getattr(patcher, "weight_inplace_update", False):
        return "weight_inplace_update"
    if getattr(patcher, "hook_patches", None):
        return "weight hooks on the model"
    for cond_list in (conds or {}).values():
        for c in cond_list or ():
            if isinstance(c, dict) and ("hooks" in c or _control_hooks(c.get("control"))):
                return "hooks in the conditioning"
    return None


def _control_hooks(control) -> bool:
    get = getattr(control, "get_extra_hooks", None)
    return bool(get()) if callable(get) else False


def _store_fp8(patcher) -> dict[str, str]:
    """Object patches replacing each wide Linear/Conv weight of the diffusion model by an FP8 copy in RAM."""
    compute = patcher.model.manual_cast_dtype or patcher.model.get_dtype()
    fp8_bytes = 0
    for name, module in patcher.model.diffusion_model.named_modules():
        key = f"diffusion_model.{name}.weight"
        weight = patcher.get_model_object(key) if hasattr(module, "comfy_cast_weights") else None
        # Only comfy.ops layers can cast per op; 1-D weights (norms) are tiny and stay wide for accuracy.
        if isinstance(weight, torch.Tensor) and weight.dtype in _WIDE and weight.dim() >= 2:
            fp8 = weight.detach().to(device=patcher.offload_device, dtype=torch.float8_e4m3fn)
            patcher.add_object_patch(key, torch.nn.Parameter(fp8, requires_grad=False))
            fp8_bytes += fp8.nbytes
    patcher.set_model_compute_dtype(compute)
    return {"fp8": format_size(fp8_bytes), "compute": str(compute).removeprefix("torch.")}


def _hardware(patcher) -> Hardware:
    """This machine as ComfyUI will run `patcher`: its load device only, with ComfyUI's own memory figures.

    The model's own bytes count as available: they are in VRAM (loaded by an earlier run) or in RAM now.
    The planner's `detect()` is not used here: it would create a CUDA context on every GPU of the machine.
    """
    device = patcher.load_device
    in_vram = patcher.loaded_size() if patcher.current_loaded_device() == device != _CPU else 0
    accelerators: tuple[Accelerator, ...] = ()
    if device.type != "cpu":
        cc = (torch.cuda.get_device_capability(device)
              if device.type == "cuda" and torch.version.hip is None else None)
        accelerators = (Accelerator(device.type, device.index or 0, mm.get_torch_device_name(device),
                                    mm.get_total_memory(device), mm.get_free_memory(device) + in_vram, cc,
                                    fp8=cc is not None and cc >= FP8_MIN_CC,
                                    bf16=device.type == "mps" or (cc is not None and cc >= BF16_MIN_CC)),)
    try:
        shm_total, shm_free = shm_space()
    except OSError:
        shm_total = shm_free = 0
    ram_free = comfy_features.free_ram() + patcher.model_size() - in_vram
    return Hardware(accelerators, mm.get_total_memory(_CPU), ram_free, shm_total, shm_free, os.cpu_count() or 1)


def _spec(module: torch.nn.Module, kind: str, name: str, family: Family | None = None) -> ModelSpec:
    """The planner's view of a built module: its bytes now, the dtype holding most of its weights, its
    largest tensor (what streaming moves at once)."""
    sd = module.state_dict()
    dtype = comfy.utils.weight_dtype(sd) or torch.float16
    size = max(1, mm.module_size(module))
    largest = max((t.nbytes for t in sd.values()), default=0)
    return ModelSpec(size, dtype.itemsize, kind, name, family, min(largest, size) or None)


def _family(patcher) -> Family:
    """The workspace constants of the model itself: ComfyUI's memory_usage_factor and latent downscale
    (0.3.64's latent formats have no downscale attributes: 8 and 1, as every image model there)."""
    base = patcher.model
    fmt = getattr(base, "latent_format", None)
    return Family(_architecture(patcher), float(getattr(base, "memory_usage_factor", Family.memory_usage_factor)),
                  int(getattr(fmt, "spacial_downscale_ratio", 8)), int(getattr(fmt, "temporal_downscale_ratio", 1)))


def work_from_prompt(prompt: dict | None, node_id: str | None) -> Work | None:
    """The largest work sampled downstream of `node_id`'s outputs in an API-format graph, or None."""
    if not prompt or node_id not in prompt:
        return None
    consumers: dict[str, list[str]] = {}
    for nid, node in prompt.items():
        for value in (node.get("inputs") or {}).values():
            if _is_link(value):
                consumers.setdefault(str(value[0]), []).append(str(nid))
    best, seen, todo = None, {str(node_id)}, [str(node_id)]
    while todo:  # everything downstream: LoRA and patch nodes, guiders, samplers
        for nid in consumers.get(todo.pop(), ()):
            if nid in seen:
                continue
            seen.add(nid)
            todo.append(nid)
            work = _latent_work(prompt, (prompt[nid].get("inputs") or {}).get("latent_image"))
            if work and (best is None or _pixels(work) > _pixels(best)):
                best = work
    return best


def _latent_work(prompt: dict, link, depth: int = 8) -> Work | None:
    """The work of the latent a link carries: back to the node that sets width and height, if one does;
    batch and frames from that node, else from the latent it takes in (LatentUpscale keeps the batch)."""
    if not _is_link(link) or depth <= 0 or str(link[0]) not in prompt:
        return None
    inputs = prompt[str(link[0])].get("inputs") or {}
    upstream = next((inputs[k] for k in ("samples", "latent", "latent_image") if _is_link(inputs.get(k))), None)
    width, height = inputs.get("width"), inputs.get("height")
    if not (_is_count(width) and _is_count(height)):
        return _latent_work(prompt, upstream, depth - 1)
    batch, frames = inputs.get("batch_size"), inputs.get("length")
    below = None if _is_count(batch) and _is_count(frames) else _latent_work(prompt, upstream, depth - 1)
    return Work(width, height, batch if _is_count(batch) else below.batch if below else 1,
                frames if _is_count(frames) else below.frames if below else 1)


def _pixels(work: Work) -> int:
    return work.width * work.height * work.batch * work.frames


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _is_count(value) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _advice(label: str, part, hardware: Hardware, budget: int | None) -> str:
    """One line on CLIP or VAE: the plan it would get (ComfyUI loads it before or after sampling itself)."""
    spec = _spec(part.patcher.model, "text_encoder" if label == "CLIP" else "vae", label)
    try:
        strategy = plan(spec, hardware, budget).strategy
    except PlanImpossible as e:
        strategy = f"nothing fits ({e})"
    return (f"{label}, {format_size(spec.weights_bytes)}: would run as {strategy}; ComfyUI loads it by its own "
            "rules (this node changes MODEL only).")


def _source_name(prompt: dict | None, node_id: str | None) -> str | None:
    """The file name of the loader upstream of this node's `model` input, following MODEL links back."""
    seen: set[str] = set()
    while prompt and node_id is not None and node_id in prompt and node_id not in seen:
        seen.add(node_id)
        inputs = prompt[node_id].get("inputs", {})
        for key in ("ckpt_name", "unet_name", "model_name"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
        link = inputs.get("model")
        node_id = str(link[0]) if isinstance(link, list) and link else None
    return None


def _architecture(patcher) -> str:
    return type(getattr(patcher.model, "model_config", patcher.model)).__name__
