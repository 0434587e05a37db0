"""`comfyui_hearth.patch()`: any torch program's safetensors loads through Hearth, until `unpatch()`.

One call, the program unchanged: after `patch()`, these read a file from the daemon's segment (copy-on-write
views, warm across processes and after the page cache lost the file) instead of the disk:
- `safetensors.torch.load_file(filename, device="cpu", *, backend="mmap")`: Hearth's `load_state_dict`,
  a drop-in (same tensors, the stock errors). diffusers' `from_pretrained` reads every .safetensors through
  it (`diffusers.models.model_loading_utils.load_state_dict`).
- `safetensors.safe_open(filename, framework, device="cpu", backend=...)`: for framework "pt" on the CPU,
  an object over the segment's views with safe_open's methods (`keys` sorted, `offset_keys` in file order,
  `get_tensor`, `get_slice` (`[...]`, `get_shape`, `get_dtype`), `get_tensors`, `metadata`, a context
  manager). transformers' `from_pretrained` reads through it (5.x: lazy `get_slice` in
  `modeling_utils._load_pretrained_model`; 4.x `load_state_dict`); diffusers looks it up inside functions.
- the same two names already bound in imported modules (`from safetensors import safe_open` in
  transformers.modeling_utils, `from safetensors.torch import load_file` in your own code): every module
  attribute that is the stock object is replaced, and put back by unpatch(). safetensors' own modules are
  left alone: the stock paths run through them.

Anything else is safetensors' own call, unchanged: another framework or device, another backend, a file the
daemon does not serve (outside its allowed folders: `roots=` adds folders for this process, as ComfyUI
registers its model folders), and any failure of Hearth's path (the client says why once per reason).
Nothing at all changes without the call. A call made while one of these is running on the same thread
(the client's own stock fallback reads through safetensors) goes straight to stock.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from .load import Loaded, absolute, load, load_state_dict, register_roots

_inside = threading.local()
_lock = threading.Lock()
_stock: dict[str, Any] = {}  # name -> safetensors' own function, while patched


class _Guard:
    def __enter__(self) -> None:
        _inside.active = True

    def __exit__(self, *exc: object) -> None:
        _inside.active = False


def _busy() -> bool:
    return getattr(_inside, "active", False)


def _cpu(device: object) -> bool:
    import torch

    return device in ("cpu", None) or (isinstance(device, torch.device) and device.type == "cpu")


def load_file(filename: str | os.PathLike, device: str | int = "cpu", *, backend: str = "mmap") -> dict:
    """safetensors.torch.load_file through Hearth (see the module's docstring)."""
    stock = _stock["load_file"]
    if _busy() or backend != "mmap":
        return stock(filename, device=device, **({} if backend == "mmap" else {"backend": backend}))
    with _Guard():
        return load_state_dict(filename, device)


def safe_open(filename: str | os.PathLike, framework: str, device: Any = "cpu", **kwargs: Any) -> Any:
    """safetensors.safe_open through Hearth: the segment's views where it can serve them, else the stock object."""
    stock = _stock["safe_open"]
    if _busy() or framework not in ("pt", "torch") or not _cpu(device) or kwargs.get("backend", "mmap") != "mmap":
        return stock(filename, framework=framework, device=device, **kwargs)
    with _Guard():
        loaded = load(filename)
    if not loaded.cached:
        return stock(filename, framework=framework, device=device, **kwargs)
    return SegmentFile(loaded)


class _Slice:
    """A PySafeSlice over a view: indexing gives the (view of the) tensor."""

    def __init__(self, tensor: Any):
        self._tensor = tensor

    def __getitem__(self, index: Any) -> Any:
        return self._tensor[index]

    def get_shape(self) -> list[int]:
        return list(self._tensor.shape)

    def get_dtype(self) -> str:
        from .mapping import TORCH_DTYPES

        return next(name for name, d in TORCH_DTYPES.items() if d == self._tensor.dtype)


class SegmentFile:
    """What `safe_open` returns for a file served from a segment: its views, safe_open's methods."""

    def __init__(self, loaded: Loaded):
        self._tensors, self._metadata, self.path = loaded.tensors, loaded.metadata, loaded.path

    def __enter__(self) -> SegmentFile:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def keys(self) -> list[str]:
        return sorted(self._tensors)

    def offset_keys(self) -> list[str]:
        return list(self._tensors)

    def metadata(self) -> dict[str, str] | None:
        return dict(self._metadata) if self._metadata else None

    def _get(self, name: str) -> Any:
        try:
            return self._tensors[name]
        except KeyError:
            from safetensors import SafetensorError

            raise SafetensorError(f"File does not contain tensor {name}") from None

    def get_tensor(self, name: str) -> Any:
        return self._get(name)

    def get_slice(self, name: str) -> _Slice:
        return _Slice(self._get(name))

    def get_tensors(self) -> dict[str, Any]:
        return dict(self._tensors)


_WRAPPERS = {"load_file": load_file, "safe_open": safe_open}


def _stock_objects() -> dict[str, Any]:
    import safetensors
    import safetensors.torch

    return {"load_file": safetensors.torch.load_file, "safe_open": safetensors.safe_open}


def _rebind(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Point every module attribute that is one of `old`'s objects at `new`'s; safetensors' own excepted."""
    by_id = {id(obj): name for name, obj in old.items()}
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name == "safetensors" or module_name.startswith("safetensors."):
            continue
        try:
            attrs = vars(module)
        except TypeError:
            continue
        for attr, value in list(attrs.items()):
            name = by_id.get(id(value))
            if name is not None and value is old[name]:
                setattr(module, attr, new[name])


def patch(roots: Iterable[str | os.PathLike] = ()) -> None:
    """Route safetensors' loads through Hearth (idempotent). `roots`: folders whose files the daemon may
    serve to this process, beside its own `model_dirs` and HEARTH_MODEL_DIRS."""
    import safetensors
    import safetensors.torch

    register_roots([absolute(r) for r in roots])
    with _lock:
        if _stock:
            return
        _stock.update(_stock_objects())
        # a function where safetensors has a class: what the callers see is the same call
        safetensors.torch.load_file, safetensors.safe_open = load_file, safe_open  # type: ignore[misc, assignment]
        _rebind(_stock, _WRAPPERS)


def unpatch() -> None:
    """Put safetensors' own functions back everywhere patch() or a later import bound Hearth's."""
    import safetensors
    import safetensors.torch

    with _lock:
        if not _stock:
            return
        # safetensors' own class back in its place
        safetensors.torch.load_file, safetensors.safe_open = _stock["load_file"], _stock["safe_open"]  # type: ignore[misc]
        _rebind(_WRAPPERS, _stock)  # every module that holds a wrapper now, imported before or after patch()
        _stock.clear()
