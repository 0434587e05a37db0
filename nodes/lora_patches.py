"""ComfyUI's LoRA patch sets, built once per (LoRA version, base model) and kept for switching back.

Used by the Hearth LoRA Swapper and, through the stock-loader hook, by ComfyUI's own LoraLoader chains.

`comfy.sd.load_lora_for_models` spends ~35 ms on a 300 MB SD1.5 LoRA before it patches anything: the
base's key map (~5 ms), then `comfy.lora.load_lora`, which tries every weight-adapter format on every one
of the key map's thousands of aliases (~25 ms). Here the key map is kept per base, `load_lora` is given
only the aliases some LoRA key starts with (every name it looks up is the alias plus a suffix, so its
result is the same), and the finished patch set is kept per (segment key, base): the key changes with
the file, so an edited LoRA is rebuilt. Bases are compared by identity through weak references: a
dropped model never matches a newer one at the same address, and its entries go with it.
"""

from __future__ import annotations

import bisect
import logging
import weakref
from collections import OrderedDict

import comfy.lora
import comfy.lora_convert

log = logging.getLogger("hearth.nodes")

# Kept entries: key maps and patch sets. Each patch set keeps its LoRA's segment mapped (shared pages).
KEPT = 10
_kept: OrderedDict[tuple, tuple] = OrderedDict()


def _ref(obj) -> weakref.ref | None:
    return None if obj is None else weakref.ref(obj)


def _alive(refs: tuple) -> bool:
    return all(r is None or r() is not None for r in refs)


def _get(key: tuple):
    for k in [k for k, (refs, _) in _kept.items() if not _alive(refs)]:
        del _kept[k]  # their base is gone
    hit = _kept.get(key)
    if hit is None:
        return None
    _kept.move_to_end(key)
    return hit[1]


def _put(key: tuple, diffusion, encoder, value) -> None:
    _kept[key] = ((_ref(diffusion), _ref(encoder)), value)
    while len(_kept) > KEPT:
        _kept.popitem(last=False)


def _key_map(diffusion, encoder) -> dict:
    base = (id(diffusion), id(encoder))
    key_map = _get(("keys", *base))
    if key_map is None:
        key_map = {}
        if diffusion is not None:
            key_map = comfy.lora.model_lora_keys_unet(diffusion, key_map)
        if encoder is not None:
            key_map = comfy.lora.model_lora_keys_clip(encoder, key_map)
        _put(("keys", *base), diffusion, encoder, key_map)
    return key_map


def _used_aliases(key_map: dict, lora_keys: list[str]) -> dict:
    """The aliases that some LoRA key starts with (sorted keys: those starting with x follow x at once)."""
    keys = sorted(lora_keys)
    out = {}
    for alias, target in key_map.items():
        i = bisect.bisect_left(keys, alias)
        if i < len(keys) and keys[i].startswith(alias):
            out[alias] = target
    return out


def patch_set(model, clip, key: str | None, tensors: dict) -> tuple[dict, bool]:
    """ComfyUI's patches of the LoRA `tensors` for MODEL and CLIP, and whether they were kept from before.

    `key` is the LoRA's segment key; loads without one (the stock fallback) are built every time, never kept.
    """
    diffusion = None if model is None else model.model
    encoder = None if clip is None else clip.cond_stage_model
    entry = ("patches", key, id(diffusion), id(encoder))
    if key and (kept := _get(entry)) is not None:
        return kept, True
    # A fresh dict: ComfyUI's conversion may rename keys in the dict it is given.
    lora = comfy.lora_convert.convert_lora(dict(tensors))
    patches = comfy.lora.load_lora(lora, _used_aliases(_key_map(diffusion, encoder), list(lora)))
    if key:
        _put(entry, diffusion, encoder, patches)
    return patches, False


def apply(model, clip, name: str, patches: dict, strength_model: float, strength_clip: float,
          lora_metadata: dict | None = None) -> tuple:
    """Clones of MODEL and CLIP carrying the patches, as `comfy.sd.load_lora_for_models` returns them
    (None stays None; ComfyUI 0.28's `lora_metadata` is attached to both clones as it attaches it)."""
    applied: set = set()
    if model is not None:
        model = model.clone()
        applied.update(model.add_patches(patches, strength_model))
        if lora_metadata:
            model.set_attachments("lora_metadata", lora_metadata)
    if clip is not None:
        clip = clip.clone()
        applied.update(clip.add_patches(patches, strength_clip))
        if lora_metadata:
            clip.patcher.set_attachments("lora_metadata", lora_metadata)
    unused = [k for k in patches if k not in applied]
    if unused:
        log.warning("Hearth LoRA %s: %d keys match no layer of this model, e.g. %s", name, len(unused),
                    unused[0])
    return model, clip
