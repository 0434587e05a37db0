"""Building ComfyUI's MODEL, CLIP and VAE from Hearth's tensors by assigning them instead of copying.

CheckpointLoaderSimple ends in `comfy.sd.load_state_dict_guess_config`, which creates every module with
uninitialised storage in the dtype ComfyUI picked and copies the file's tensors into it:
`torch.nn.Module.load_state_dict(..., assign=patcher.is_dynamic())` in `BaseModel.load_model_weights`,
`CLIP.load_sd` and `VAE.__init__`; only the Dynamic VRAM patcher (`ModelPatcherDynamic`) assigns. On CPU the
fp16 UNet and VAE are also widened to fp32. Both cost seconds and a private copy of the weights per process.

We run that same stock function, so every architecture ComfyUI detects keeps working, with one decision
overridden for the duration of the call and on the calling thread only: `Module.load_state_dict` assigns.
Per tensor:
- same dtype and device as the parameter: the tensor itself (Hearth's copy-on-write view) becomes it;
- a lossless widening away (fp16/bf16 stored, fp32 wanted) and the parameter is the weight or bias of a
  ComfyUI op (`comfy.ops`): the view becomes the parameter and the op casts it to its input's dtype at
  every call (`comfy_cast_weights`, what `comfy.ops.manual_cast` ops always do). The model keeps the dtype
  stock gives it (`model_dtype()`, the inputs' dtype), and an exact fp16->fp32 cast per op computes what
  stock computes from its widened copy: bit-identical outputs. This is the Dynamic VRAM patcher's scheme
  too (assigned file tensors, declared dtype kept by `model_management.archive_model_dtypes`);
- anything else: converted as stock converts it (a copy), then assigned.

LoRA patching (`ModelPatcher.patch_weight_to_device`) rounds a patched weight to the weight's own dtype, so a
weight kept narrow would round LoRA results where stock keeps fp32. A PREPARE_SAMPLING wrapper on the
MODEL's patcher (cloned into every LoRA'd copy) therefore gives each patched narrow weight a widened copy as
an object patch before ComfyUI applies the patches. CLIP has no such hook before its patches are applied,
so narrow CLIP weights (only with flags such as --fp32-text-enc) are widened right after the build.
The VAE is never LoRA-patched and stays narrow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator

import torch

import comfy.patcher_extension
import comfy.sd
import comfy.utils

log = logging.getLogger("hearth.nodes")

# Widening casts that lose nothing: a weight kept in the narrow dtype and cast per op equals stock's.
_LOSSLESS = {(torch.float16, torch.float32), (torch.bfloat16, torch.float32)}
_build_lock = threading.Lock()


class _Assigner:
    """The scoped `load_state_dict`; remembers which parameters it kept narrower than stock would."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.stock = torch.nn.Module.load_state_dict
        self.narrow: dict[int, torch.dtype] = {}  # id(parameter) -> the dtype stock would have stored

    def load_state_dict(self, module: torch.nn.Module, state_dict, strict: bool = True, assign: bool = False):
        if assign or threading.get_ident() != self.owner:
            return self.stock(module, state_dict, strict=strict, assign=assign)
        own = module.state_dict(keep_vars=True)
        given, narrow = dict(state_dict), []
        for key, tensor in state_dict.items():
            target = own.get(key)
            if target is None or not isinstance(tensor, torch.Tensor) or (
                    tensor.dtype == target.dtype and tensor.device == target.device):
                continue
            op_name, _, attr = key.rpartition(".")
            op = module.get_submodule(op_name)
            if (tensor.device == target.device and (tensor.dtype, target.dtype) in _LOSSLESS
                    and attr in ("weight", "bias") and hasattr(op, "comfy_cast_weights")):
                narrow.append((op, attr, target.dtype))
            else:
                given[key] = tensor.to(device=target.device, dtype=target.dtype)  # the copy stock makes
        result = self.stock(module, given, strict=strict, assign=True)
        for op, attr, dtype in narrow:
            op.comfy_cast_weights = True
            self.narrow[id(getattr(op, attr))] = dtype
        return result

    def narrowed_in(self, module: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.dtype]]:
        """name -> (parameter, stock dtype) of `module`'s parameters that were kept narrow."""
        return {name: (p, self.narrow[id(p)]) for name, p in module.named_parameters() if id(p) in self.narrow}


@contextlib.contextmanager
def _assigning() -> Iterator[_Assigner]:
    """Install the override around one stock build; builds are serialised so that installs never nest."""
    with _build_lock:
        a = _Assigner()
        # A plain function as the class attribute, so that torch passes the module as the first argument.
        torch.nn.Module.load_state_dict = lambda module, *args, **kw: a.load_state_dict(module, *args, **kw)
        try:
            yield a
        finally:
            torch.nn.Module.load_state_dict = a.stock


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
        with _assigning() as a:
            out = stock_build()
    except Exception:
        log.warning("Hearth: building by assignment failed; building the stock way (copies)", exc_info=True)
        out, a = stock_build(), None
    if out is None:
        raise RuntimeError("ERROR: Could not detect model type of the checkpoint")
    model, clip, vae = out[:3]
    if a is not None and a.narrow:
        if model is not None:
            _keep_lora_results_wide(model, a.narrowed_in(model.model))
        if clip is not None:
            for name, (param, dtype) in a.narrowed_in(clip.cond_stage_model).items():
                comfy.utils.set_attr_param(clip.cond_stage_model, name, param.to(dtype))
    return model, clip, vae


def _keep_lora_results_wide(patcher, narrow: dict[str, tuple[torch.Tensor, torch.dtype]]) -> None:
    if narrow:
        patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "hearth.lora_dtype",
                                     functools.partial(_widen_patched, narrow))


def _widen_patched(narrow: dict[str, tuple[torch.Tensor, torch.dtype]], executor, model, *args, **kwargs):
    """PREPARE_SAMPLING wrapper: widen the narrow base weights that carry patches before ComfyUI applies them."""
    for key in model.patches:
        if key in narrow and key not in model.object_patches:
            weight, dtype = narrow[key]
            model.add_object_patch(key, torch.nn.Parameter(weight.to(dtype), requires_grad=False))
    return executor(model, *args, **kwargs)
