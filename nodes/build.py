"""Building ComfyUI's MODEL, CLIP and VAE from Hearth's tensors by assigning them instead of copying.

CheckpointLoaderSimple ends in `comfy.sd.load_state_dict_guess_config`, which creates every module with
uninitialised storage and copies the file's tensors into it: `torch.nn.Module.load_state_dict(...,
assign=patcher.is_dynamic())` in `BaseModel.load_model_weights`, `CLIP.load_sd` and `VAE.__init__`, where
only the Dynamic VRAM patcher (`ModelPatcherDynamic`) assigns. On CPU it also widens an fp16 UNet to fp32
(`comfy.model_management.unet_dtype`). Both cost seconds and a private copy of the weights per process.

We run that same stock function (so every architecture ComfyUI detects keeps working) with two of its
decisions overridden for the duration of the call, on the calling thread only:

1. `comfy.model_management.unet_dtype`: where stock would widen the UNet's weights losslessly (fp16/bf16 to
   fp32) and ComfyUI's per-op cast (`unet_manual_cast`, `comfy.ops.manual_cast`) computes in the dtype that
   stock computes in, the weights keep the file's dtype. Same compute dtype, same values: same pixels.
   An explicit `--*-unet` dtype flag of the user is respected.
2. `torch.nn.Module.load_state_dict`: when every given tensor already has its parameter's dtype and device,
   the tensors are assigned (Hearth's copy-on-write views become the parameters). Otherwise the stock copy
   runs, e.g. for the VAE, which ComfyUI keeps in fp32 on CPU.

LoRA patching (`ModelPatcher.patch_weight_to_device`) rounds a patched weight to the weight's own dtype, so
a narrowed UNet would round LoRA results to fp16 where stock keeps fp32. A PREPARE_SAMPLING wrapper on the
patcher (cloned into every LoRA'd copy) therefore gives each patched key a widened copy of its base weight
as an object patch before ComfyUI loads the model: LoRA results are then bit-identical to stock's.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Iterator

import torch

import comfy.cli_args
import comfy.model_management
import comfy.patcher_extension
import comfy.sd

log = logging.getLogger("hearth.nodes")

# Widening casts that lose nothing: a weight kept in the narrow dtype and cast per op equals stock's.
_LOSSLESS = {(torch.float16, torch.float32), (torch.bfloat16, torch.float32)}
_build_lock = threading.Lock()


class _Overrides:
    """The two scoped decisions; records whether the UNet kept a narrower dtype than stock's."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.narrowed: tuple[torch.dtype, torch.dtype] | None = None  # (kept, stock would use)
        self.stock_unet_dtype = comfy.model_management.unet_dtype
        self.stock_load_state_dict = torch.nn.Module.load_state_dict
        self.unet_signature = inspect.signature(self.stock_unet_dtype)

    def unet_dtype(self, *args, **kwargs) -> torch.dtype:
        chosen = self.stock_unet_dtype(*args, **kwargs)
        if threading.get_ident() != self.owner or _user_chose_unet_dtype():
            return chosen
        call = self.unet_signature.bind(*args, **kwargs)
        call.apply_defaults()
        weight_dtype = call.arguments.get("weight_dtype")
        if (weight_dtype, chosen) not in _LOSSLESS:
            return chosen
        device = call.arguments.get("device") or comfy.model_management.get_torch_device()
        supported = call.arguments.get("supported_dtypes")
        manual_cast = comfy.model_management.unet_manual_cast
        stock_compute = manual_cast(chosen, device, supported) or chosen
        if manual_cast(weight_dtype, device, supported) != stock_compute:
            return chosen
        self.narrowed = (weight_dtype, chosen)
        return weight_dtype

    def load_state_dict(self, module: torch.nn.Module, state_dict, strict: bool = True, assign: bool = False):
        if not assign and threading.get_ident() == self.owner:
            assign = _assignable(module, state_dict)
        return self.stock_load_state_dict(module, state_dict, strict=strict, assign=assign)


def _user_chose_unet_dtype() -> bool:
    # --fp32-unet, --fp16-unet, --bf16-unet, --fp8_e4m3fn-unet, ...: the user's choice wins.
    return any(v for k, v in vars(comfy.cli_args.args).items() if k.endswith("_unet"))


def _assignable(module: torch.nn.Module, state_dict) -> bool:
    own = module.state_dict(keep_vars=True)
    shared = [k for k in state_dict if k in own]
    return bool(shared) and all(
        isinstance(state_dict[k], torch.Tensor) and state_dict[k].dtype == own[k].dtype
        and state_dict[k].device == own[k].device for k in shared)


@contextlib.contextmanager
def _assigning() -> Iterator[_Overrides]:
    """Install both overrides around one stock build; builds are serialised so the patches never nest."""
    with _build_lock:
        o = _Overrides()
        # Bound methods of `o` keep the stock functions; the class attribute must be a plain function so
        # that torch passes the module as the first argument.
        comfy.model_management.unet_dtype = o.unet_dtype
        torch.nn.Module.load_state_dict = lambda module, *a, **kw: o.load_state_dict(module, *a, **kw)
        try:
            yield o
        finally:
            comfy.model_management.unet_dtype = o.stock_unet_dtype
            torch.nn.Module.load_state_dict = o.stock_load_state_dict


def build_checkpoint(tensors: dict[str, torch.Tensor], metadata: dict | None,
                     embedding_directory: list[str] | None) -> tuple:
    """(MODEL, CLIP, VAE) of a checkpoint's tensors, as CheckpointLoaderSimple gives them.

    `tensors` is left intact (the stock function empties the dict it gets, so it gets a shallow copy).
    Should the assigning build fail on some architecture, the plain stock build runs on the same tensors.
    """
    def stock_build():
        return comfy.sd.load_state_dict_guess_config(dict(tensors), output_vae=True, output_clip=True,
                                                     embedding_directory=embedding_directory,
                                                     metadata=metadata)
    try:
        with _assigning() as o:
            out = stock_build()
    except Exception:
        log.warning("Hearth: building by assignment failed; building the stock way (copies)", exc_info=True)
        out, o = stock_build(), None
    if out is None:
        raise RuntimeError("ERROR: Could not detect model type of the checkpoint")
    model = out[0]
    if o is not None and o.narrowed is not None and model is not None:
        _keep_lora_results_wide(model, *o.narrowed)
    return out[:3]


def _keep_lora_results_wide(patcher, kept: torch.dtype, stock: torch.dtype) -> None:
    base = {k: v for k, v in patcher.model.state_dict(keep_vars=True).items() if v.dtype == kept}
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "hearth.lora_dtype",
                                 functools.partial(_widen_patched, base, stock))


def _widen_patched(base: dict[str, torch.Tensor], dtype: torch.dtype, executor, model, *args, **kwargs):
    """PREPARE_SAMPLING wrapper: widen the base weights that carry patches before ComfyUI applies them."""
    for key in model.patches:
        weight = base.get(key)
        if weight is not None and key not in model.object_patches:
            model.add_object_patch(key, torch.nn.Parameter(weight.to(dtype), requires_grad=False))
    return executor(model, *args, **kwargs)
