"""Model files as ComfyUI names them, turned into tensors through Hearth's client."""

from __future__ import annotations

import folder_paths

from ..client import Loaded, load, register_roots
from ..core.model_files import is_cached_kind

# The folders whose files the daemon may serve to this process (extra_model_paths included).
_FOLDERS = ("checkpoints", "loras")


def fetch(folder: str, name: str) -> Loaded:
    """Tensors of `name` in ComfyUI's `folder`: the shared segment, or the client's stock fallback."""
    path = folder_paths.get_full_path_or_raise(folder, name)
    # Cheap when unchanged (a set difference); picks up folders added to ComfyUI since the last run.
    register_roots([p for f in _FOLDERS for p in folder_paths.get_folder_paths(f)])
    return load(path)


def safetensors_metadata(path: str) -> dict[str, str] | None:
    """The header's __metadata__ (ComfyUI reads quantisation and model hints there); None for pickles."""
    if not is_cached_kind(path):
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.metadata()
