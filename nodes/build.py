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

LoRA patching (`ModelPatcher.patch_weight_to_device`) rounds a patched weight to the weight's own dtype,
which would round LoRA results to fp16 where stock keeps fp32. Every op whose weight is kept narrow gets
`set_weight`/`set_bias`, the hook that `model_patcher.get_key_weight` looks up on an op (ComfyUI's
quantised ops use it): patched values are stored in the dtype stock would store, whichever LoRA node or
hook patched them, and unpatching restores the shared view. Patched weights are private copies in stock too.
(Low-VRAM patches apply to the per-op cast weight, already in stock's dtype.)

Which tensors may be assigned: the Hearth Checkpoint Loader assigns every tensor it built from (its own
fetch, segment or fallback, both copy-on-write). The stock-loader hook (stock_loaders.py) assigns only the
segment views it handed out (`mark_shared`; views ComfyUI derives from them, e.g. by a reshape, count too,
through their `_base`); any other tensor in the same build is copied as stock copies it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator

import torch

import comfy.sd

log = logging.getLogger("hearth.nodes")

# Widening casts that lose nothing: a weight kept in the narrow dtype and cast per op equals stock's.
_LOSSLESS = {(torch.float16, torch.float32), (torch.bfloat16, torch.float32)}
_build_lock = threading.Lock()
_scope = threading.local()  # .assigner: the scope this thread is building in, if any

# Segment views the stock-loader hook handed out, by the id of their root tensor (a view's `_base`, the
# tensor over the mapping): id -> (weak reference, segment key). Entries go when the tensor does.
_shared: dict[int, tuple[weakref.ref, str | None]] = {}


def _root(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base


def mark_shared(tensors: dict[str, torch.Tensor], key: str | None) -> None:
    """Record `tensors` (a segment's views) as assignable by a scoped build, with their segment's key."""
    for t in tensors.values():
        root = _root(t)
        i = id(root)
        # The callback drops the entry only if it is still this tensor's (ids are reused after death).
        def forget(r: weakref.ref, i: int = i) -> None:
            if _shared.get(i, (None,))[0] is r:
                _shared.pop(i)

        ref = weakref.ref(root, forget)
        _shared[i] = (ref, key)


def is_shared(t: object) -> bool:
    """Whether `t` is (a view of) a segment view that mark_shared recorded."""
    if not isinstance(t, torch.Tensor):
        return False
    root = _root(t)
    entry = _shared.get(id(root))
    return entry is not None and entry[0]() is root


def shared_key(tensors: object) -> str | None:
    """The segment key of a dict whose every tensor came from one recorded segment, else None."""
    if not isinstance(tensors, dict) or not tensors:
        return None
    keys = set()
    for t in tensors.values():
        if not is_shared(t):
            return None
        keys.add(_shared[id(_root(t))][1])
    return keys.pop() if len(keys) == 1 else None


def holds_shared(*values: object) -> bool:
    """Whether any value, or any dict in a list of values, holds a recorded view (a build to scope)."""
    for v in values:
        if isinstance(v, dict) and any(is_shared(t) for t in v.values()):
            return True
        if isinstance(v, (list, tuple)) and holds_shared(*v):
            return True
    return False


class _Assigner:
    """The scoped `load_state_dict`; assigns the tensors `assignable` accepts (None: every tensor)."""

    def __init__(self, assignable: Callable[[torch.Tensor], bool] | None) -> None:
        self.owner = threading.get_ident()
        self.stock = torch.nn.Module.load_state_dict
        self.assignable = assignable
        self.narrowed = 0  # parameters kept narrower than stock would store them

    def load_state_dict(self, module: torch.nn.Module, state_dict, strict: bool = True, assign: bool = False):
        if assign or threading.get_ident() != self.owner or (
                self.assignable is not None and not any(map(self.assignable, state_dict.values()))):
            return self.stock(module, state_dict, strict=strict, assign=assign)
        own = module.state_dict(keep_vars=True)
        given, narrow = dict(state_dict), []
        for key, tensor in state_dict.items():
            target = own.get(key)
            if target is None or not isinstance(tensor, torch.Tensor):
                continue
            if self.assignable is not None and not self.assignable(tensor):
                # Not Hearth's: a private copy in the parameter's dtype, which is what stock's copy_ makes.
                given[key] = tensor.to(device=target.device, dtype=target.dtype, copy=True)
                continue
            if tensor.dtype == target.dtype and tensor.device == target.device:
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
            # torch types a module's unknown attributes as Tensor | Module; this is ComfyUI's ops' flag
            op.comfy_cast_weights = True  # type: ignore[assignment]
            # A weak reference: the op must not keep itself alive through its own attribute.
            setattr(op, f"set_{attr}", functools.partial(_store_patched, weakref.ref(op), attr, dtype))
            self.narrowed += 1
        return result


def _store_patched(op_ref: weakref.ref, attr: str, dtype: torch.dtype, value: torch.Tensor,
                   inplace_update: bool = False, seed: int | None = None, return_weight: bool = False,
                   **kwargs) -> torch.Tensor | None:
    """An op's `set_weight`/`set_bias`: a patched value in stock's dtype, never rounded to the narrow one.

    Even for `inplace_update` the parameter is replaced: writing into the narrow shared view would round;
    the patcher restores its backup into whatever parameter is current, so values stay stock's.
    """
    value = value.to(dtype)
    if return_weight:
        return value
    setattr(op_ref(), attr, torch.nn.Parameter(value, requires_grad=False))
    return None


@contextlib.contextmanager
def assigning(assignable: Callable[[torch.Tensor], bool] | None = None) -> Iterator[_Assigner]:
    """Install the override around one stock build. Builds are serialised so that installs never nest
    across threads; on one thread a build inside a build (a checkpoint's VAE) runs in the outer scope."""
    outer = getattr(_scope, "assigner", None)
    if outer is not None:
        yield outer
        return
    with _build_lock:
        a = _Assigner(assignable)
        # A plain function as the class attribute, so that torch passes the module as the first argument.
        torch.nn.Module.load_state_dict = (  # type: ignore[method-assign]  # the override is the point
            lambda module, *args, **kw: a.load_state_dict(module, *args, **kw))
        _scope.assigner = a
        try:
            yield a
        finally:
            _scope.assigner = None
            torch.nn.Module.load_state_dict = a.stock  # type: ignore[method-assign]  # torch's own, back


def build_checkpoint(tensors: dict[str, torch.Tensor], metadata: dict | None,
                     embedding_directory: list[str] | None, disable_dynamic: bool = False) -> tuple:
    """(MODEL, CLIP, VAE) of a checkpoint's tensors, as CheckpointLoaderSimple gives them.

    `tensors` is left intact (the stock function empties the dict it gets, so it gets a shallow copy).
    Should the assigning build fail on some architecture, the plain stock build runs on the same tensors.
    `disable_dynamic` (ComfyUI 0.28's reload factories ask for it) builds with the classic ModelPatcher.
    """
    extra = {"disable_dynamic": True} if disable_dynamic else {}  # a keyword 0.3.64 and 0.13 lack

    def stock_build():
        return comfy.sd.load_state_dict_guess_config(dict(tensors), output_vae=True, output_clip=True,
                                                     embedding_directory=embedding_directory,
                                                     metadata=metadata, **extra)
    try:
        with assigning() as a:
            out = stock_build()
    except Exception:
        log.warning("Hearth: building by assignment failed; building the stock way (copies)", exc_info=True)
        out, a = stock_build(), None
    if out is None:
        raise RuntimeError("ERROR: Could not detect model type of the checkpoint")
    if a is not None and a.narrowed:
        log.debug("Hearth: %d weights kept narrow, cast per op", a.narrowed)
    return out[:3]
