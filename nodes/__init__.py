"""Hearth's ComfyUI nodes and the pack's entry inside ComfyUI. The only package of Hearth that imports ComfyUI.

Node API: V1 (`NODE_CLASS_MAPPINGS`) for the whole pack. The loaders Hearth stands in for, CheckpointLoaderSimple
and LoraLoader, are V1 classes in 0.3.64, 0.13 and 0.28 alike, and V1 loads unchanged in all three; V3's
`comfy_api.latest` moves between them (0.3.64's ComboDynamic and AutogrowDynamic are DynamicCombo and Autogrow
in 0.28) and is ignored where a pack also has V1 mappings.
"""

import logging

from .checkpoint import HearthCheckpointLoader
from .lora import HearthLoraSwapper
from .vram import HearthVRAMBudget

log = logging.getLogger("hearth.nodes")

NODE_CLASS_MAPPINGS = {
    "HearthCheckpointLoader": HearthCheckpointLoader,
    "HearthLoraSwapper": HearthLoraSwapper,
    "HearthVRAMBudget": HearthVRAMBudget,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "HearthCheckpointLoader": "Hearth Checkpoint Loader",
    "HearthLoraSwapper": "Hearth LoRA Swapper",
    "HearthVRAMBudget": "Hearth VRAM Budget",
}


def _comfy_server():
    """ComfyUI's PromptServer of this process, or None (ComfyUI used as a library has none)."""
    try:
        from server import PromptServer  # ComfyUI's (imported already when ComfyUI loads its packs)
    except Exception:  # ComfyUI used as a library, without its server
        log.debug("Hearth: no ComfyUI server module", exc_info=True)
        return None
    return getattr(PromptServer, "instance", None)


def _join_server() -> None:
    """Where this process runs ComfyUI's server: the panel's /hearth/ routes on it, and the user's daemon
    kept running for it (lifecycle.py: checked on a thread, ComfyUI's start does not wait). Never raises."""
    instance = _comfy_server()
    if instance is None:
        log.debug("Hearth: no ComfyUI server in this process; no panel routes, the daemon is not kept")
        return
    try:
        from . import routes

        routes.register(instance)  # once per server, however many times the pack is imported
    except Exception:  # the panel is optional; the nodes must still load
        log.exception("Hearth: could not add the panel's routes")
    try:
        from . import lifecycle

        lifecycle.start()
    except Exception:  # the daemon is optional; the nodes must still load
        log.exception("Hearth: could not check the daemon")


_join_server()


try:  # ComfyUI's own loaders through Hearth, per the Hearth.StockLoaders setting (stock_loaders.py)
    from .stock_loaders import install as _install_stock_loaders

    _install_stock_loaders()
except Exception:  # never stops the nodes; ComfyUI's loaders then load as usual
    log.exception("Hearth: could not hook ComfyUI's stock loaders; they load as usual")


# Last, after the hooks above (each step of the start in its order): queued prompts prefetch their models.
from .prefetch import register as _register_prefetch  # noqa: E402 - never raises

_register_prefetch()
