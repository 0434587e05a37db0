"""ComfyUI functions the nodes call that not every supported release has, found by looking, never by version.

Each function here names what it looks for and what it does where that is missing (read in the sources of
0.3.64, the pack's declared minimum, 0.13.0 and 0.28.2):

    ModelPatcher.is_dynamic()        0.13+ (Dynamic VRAM); 0.3.64 has no Dynamic VRAM: False
    model_management.get_free_ram()  0.13 only (Windows-aware); 0.3.64 and 0.28 read psutil inline: psutil
    prepare_sampling force_full_load 0.13+ passes it to load_models_gpu; 0.3.64 has no such argument: load
                                     the models again with load_models_gpu(force_full_load=True), which
                                     every release has
"""

from __future__ import annotations

import psutil

import comfy.model_management as mm


def is_dynamic(patcher) -> bool:
    """Whether ComfyUI's Dynamic VRAM (ModelPatcherDynamic) drives `patcher`."""
    method = getattr(patcher, "is_dynamic", None)
    return bool(method()) if callable(method) else False


def free_ram() -> int:
    """Bytes of RAM available to this process now, as ComfyUI counts them."""
    get = getattr(mm, "get_free_ram", None)
    return int(get()) if callable(get) else psutil.virtual_memory().available


def prepare_fully_loaded(executor, model, *args, **kwargs):
    """Run a PREPARE_SAMPLING executor so that `model` (and the models it brings) end up wholly in VRAM.

    Where ComfyUI hands the wrapper `force_full_load` (0.13+), setting it makes ComfyUI's own load skip the
    lowvram split. 0.3.64 has no such argument (passing one raises TypeError); there ComfyUI loads as usual
    and a second `load_models_gpu(..., force_full_load=True)` loads what it left out (already loaded weights
    stay where they are, so nothing is copied twice).
    """
    if "force_full_load" in kwargs:
        kwargs["force_full_load"] = True
        return executor(model, *args, **kwargs)
    result = executor(model, *args, **kwargs)
    mm.load_models_gpu([model, *result[2]], force_full_load=True)  # result: (real model, conds, extra models)
    return result
