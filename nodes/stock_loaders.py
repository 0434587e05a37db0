"""ComfyUI's own loader nodes through Hearth: warm, shared loads for the workflows people already have.

Under the setting `Hearth.StockLoaders` (stock_setting.py) CheckpointLoaderSimple, UNETLoader, the CLIP
loaders (single to quadruple), VAELoader, LoraLoader(ModelOnly), ControlNetLoader, CLIPVisionLoader and
UpscaleModelLoader read their .safetensors files from Hearth's segments and build their modules by
assigning the segment's views (build.py) where ComfyUI would copy into fresh storage. Every one of them
reads through `comfy.utils.load_torch_file`, so that is the one read hook; the builds are scoped around the
builders that copy. Output is stock's, bit for bit (the tests compare pixels on 0.3.64, 0.13 and 0.28).

ComfyUI names this depends on (each looked up at install; one that is missing is skipped, so a release
that renames it loses only that piece, and loads the stock way there):
- `comfy.utils.load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False)` (same in the
  three releases): wrapped, and so are its copies bound by name at import in `comfy.*` modules
  (`comfy.clip_vision`, 0.28's `comfy.bg_removal_model`); `comfy.utils.DISABLE_MMAP` (--disable-mmap);
- builders scoped to assign: `comfy.sd.load_state_dict_guess_config`, `comfy.sd.load_diffusion_model_state_dict`,
  `comfy.sd.load_text_encoder_state_dicts`, `comfy.sd.VAE.__init__`,
  `comfy.controlnet.controlnet_load_state_dict`, `comfy.clip_vision.ClipVisionModel.load_sd` and spandrel's
  `ModelLoader.load_from_state_dict` (UpscaleModelLoader);
- `comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip[, lora_metadata])`:
  for a LoRA read from a segment, the patch set is Hearth LoRA Swapper's (lora_patches.py), kept per
  (LoRA version, base), so a chain of LoraLoaders switching back reuses its patches;
- `folder_paths.folder_names_and_paths` (which files count as models: sources.py).

What loads the stock way, always: the setting off; HEARTH_DISABLE; a file outside ComfyUI's model folders;
anything but .safetensors/.sft (pickles); a device other than the CPU; --disable-mmap; and any failure of
Hearth's path (daemon down, over budget, a refused file: the client says why once per reason).

Hazards handled: every read maps the segment afresh, so no two builds ever share one dict of views
(diffusers-format conversion writes into the tensors it is given; on the private mapping such a write is
a private page). Header metadata is handed out as a copy (VAELoader writes into it). LoraLoader keeps its
dict on the node instance (`self.loaded_lora`): while that node lives, its LoRA's segment stays mapped
and counts as held, exactly as the file's pages would stay mapped in stock.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import time

import torch

import comfy.sd
import comfy.utils

from ..client import load
from ..core.model_files import is_cached_kind
from . import build, lora_patches, stock_setting
from .sources import model_name
from .status import report

log = logging.getLogger("hearth.nodes")

MARK = "__hearth_stock_loaders__"  # on every wrapper: a pack imported twice installs once


def _wrap(owner: object, attr: str, make) -> bool:
    """Replace owner.attr by make(original), unless it is missing or already one of ours."""
    original = getattr(owner, attr, None)
    if original is None or getattr(original, MARK, False):
        return False
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, MARK, True)
    setattr(owner, attr, wrapper)
    return True


# ---- reading --------------------------------------------------------------------------------------

def _cpu(device: object) -> bool:
    return device is None or (isinstance(device, (str, torch.device)) and torch.device(device).type == "cpu")


def _serve(ckpt: object, device: object) -> tuple[dict, dict | None] | None:
    """(views, metadata) of `ckpt` from Hearth's segment, or None: then the stock read runs."""
    if not isinstance(ckpt, (str, os.PathLike)) or not is_cached_kind(os.fspath(ckpt)):
        return None
    if not _cpu(device) or getattr(comfy.utils, "DISABLE_MMAP", False) or os.environ.get("HEARTH_DISABLE"):
        return None
    if not stock_setting.enabled():
        return None
    path = os.fspath(ckpt)
    where = model_name(path)
    if where is None:
        return None
    t0 = time.perf_counter()
    loaded = load(path)
    if not loaded.cached:  # the client said why, and the node says it too; ComfyUI's own read runs, its way
        _report(where, loaded, time.perf_counter() - t0)
        return None
    build.mark_shared(loaded.tensors, loaded.key)
    _report(where, loaded, time.perf_counter() - t0)
    # A copy: loaders write into the metadata they get (VAELoader's taef2 hint) and the header is cached.
    return loaded.tensors, (dict(loaded.metadata) if loaded.metadata else None)


def _report(where: tuple[str, str], loaded, seconds: float) -> None:
    try:
        from server import PromptServer

        node_id = getattr(getattr(PromptServer, "instance", None), "last_node_id", None)
        report("stock", node_id, where[0], where[1], loaded, seconds)
    except Exception:  # ComfyUI as a library has no server to tell; the load stands
        log.debug("Hearth: load of %s not reported", where[1], exc_info=True)


def _reader(stock):
    signature = inspect.signature(stock)

    def load_torch_file(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return stock(*args, **kwargs)  # let ComfyUI's own function word the error
        bound.apply_defaults()
        a = bound.arguments
        try:
            served = _serve(a.get("ckpt"), a.get("device"))
        except Exception:  # Hearth's path failing is a stock load, never an error
            log.warning("Hearth: reading %s through the cache failed; reading it the stock way", a.get("ckpt"),
                        exc_info=True)
            served = None
        if served is None:
            return stock(*args, **kwargs)
        return served if a.get("return_metadata") else served[0]

    return load_torch_file


# ---- building -------------------------------------------------------------------------------------

def _scoped(stock):
    """A builder that assigns the segment views among its arguments (and copies everything else)."""
    def builder(*args, **kwargs):
        if not build.holds_shared(*args, *kwargs.values()):
            return stock(*args, **kwargs)
        with build.assigning(build.is_shared):
            return stock(*args, **kwargs)

    return builder


def _lora(stock):
    """load_lora_for_models with Hearth's kept patch sets for a LoRA read from one segment."""
    def load_lora_for_models(model, clip, lora, strength_model, strength_clip, *args, **kwargs):
        key = build.shared_key(lora)
        if key is None or args or set(kwargs) - {"lora_metadata"}:
            return stock(model, clip, lora, strength_model, strength_clip, *args, **kwargs)
        patches, reused = lora_patches.patch_set(model, clip, key, lora)
        if reused:
            log.info("Hearth LoRA of segment %s: patches reused", key)
        return lora_patches.apply(model, clip, key, patches, strength_model, strength_clip,
                                  lora_metadata=kwargs.get("lora_metadata"))

    return load_lora_for_models


def _builders() -> list[tuple[object, str]]:
    out = [(comfy.sd, "load_state_dict_guess_config"), (comfy.sd, "load_diffusion_model_state_dict"),
           (comfy.sd, "load_text_encoder_state_dicts"), (comfy.sd.VAE, "__init__")]
    for module, owner, attr in (("comfy.controlnet", None, "controlnet_load_state_dict"),
                                ("comfy.clip_vision", "ClipVisionModel", "load_sd"),
                                ("spandrel", "ModelLoader", "load_from_state_dict")):
        try:
            __import__(module)
        except Exception:  # a release or an environment without it: nothing to scope
            log.debug("Hearth: %s not importable; its builds copy", module, exc_info=True)
            continue
        m = sys.modules[module]
        out.append((getattr(m, owner, None) if owner else m, attr))
    return out


def install() -> list[str]:
    """Wrap ComfyUI's reader, builders and LoRA patcher (once per process); the names wrapped now."""
    import comfy.clip_vision  # binds load_torch_file by name: wrapped below with the others

    done = []
    original = comfy.utils.load_torch_file
    if _wrap(comfy.utils, "load_torch_file", _reader):
        done.append("comfy.utils.load_torch_file")
        reader = comfy.utils.load_torch_file
        for name, module in list(sys.modules.items()):
            if name.startswith(("comfy.", "comfy_extras.")) and \
                    getattr(module, "load_torch_file", None) is original:
                module.load_torch_file = reader  # type: ignore[attr-defined]  # ComfyUI's module bound it by name
                done.append(f"{name}.load_torch_file")
    for owner, attr in _builders():
        if owner is not None and _wrap(owner, attr, _scoped):
            done.append(f"{getattr(owner, '__name__', owner)}.{attr}")
    if _wrap(comfy.sd, "load_lora_for_models", _lora):
        done.append("comfy.sd.load_lora_for_models")
    if done:
        on, source = stock_setting.state()
        log.info("Hearth: stock loaders %s (%s %s): %s", "read through the cache" if on else "load as usual",
                 stock_setting.SETTING_ID, "from " + source, ", ".join(done))
    return done
