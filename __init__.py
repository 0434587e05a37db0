"""Hearth: model weights kept warm in shared memory for ComfyUI.

As a library: `comfyui_hearth.load_state_dict(path)`, or `comfyui_hearth.patch()` to route safetensors'
loads (and so diffusers' and transformers' from_pretrained) through Hearth until `unpatch()`. Inside ComfyUI
(which imports this folder from custom_nodes/) it also registers the nodes and the web panel. Outside ComfyUI
nothing of ComfyUI, torch or the daemon's server is imported until it is used.
"""

import sys
from typing import Any

__all__ = ["__version__", "load_state_dict", "patch", "unpatch"]

# Imported as a plain module, not as a package: pytest does that to the root of a clone whose folder name
# is not an identifier (`custom_nodes/comfyui-hearth`); relative imports cannot work there, nothing needs them.
if __package__:
    from .core.version import __version__

    def __getattr__(name: str) -> Any:
        # Lazy so that `hearth status` and the daemon never pay for importing torch.
        if name == "load_state_dict":
            from .client import load_state_dict

            return load_state_dict
        if name in ("patch", "unpatch"):
            from .client import patch as _patch

            return getattr(_patch, name)
        raise AttributeError(name)

    if "folder_paths" in sys.modules and "comfy" in sys.modules:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

        WEB_DIRECTORY = "./web"
        __all__ += ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
