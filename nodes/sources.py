"""Model files as ComfyUI names them, turned into tensors through Hearth's client.

ComfyUI's model folders are the entries of `folder_paths.folder_names_and_paths` whose extensions include
`.safetensors` (checkpoints, loras, vae, text_encoders, diffusion_models, controlnet, upscale_models, ...,
and those custom nodes add); configs, custom_nodes and the diffusers folders are not model files' homes.
Every such folder (extra_model_paths included) is allowed to the daemon for this process's loads.
"""

from __future__ import annotations

import os

import folder_paths

from ..client import Loaded, load, register_roots
from ..core.model_files import CACHED_EXTS, is_cached_kind

_real_roots: dict[tuple, list[tuple[str, str]]] = {}  # raw folder table -> [(real root, folder name)]


def model_folders() -> list[tuple[str, str]]:
    """(folder name, path) of every ComfyUI folder that holds .safetensors models, as configured now."""
    out: list[tuple[str, str]] = []
    for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
        if any(e in exts for e in CACHED_EXTS):
            out.extend((name, p) for p in paths)
    return out


def _roots() -> list[tuple[str, str]]:
    """The model folders' real paths, longest first; recomputed only when ComfyUI's folder table changed."""
    raw = tuple(model_folders())
    roots = _real_roots.get(raw)
    if roots is None:
        roots = sorted({(os.path.realpath(p), name) for name, p in raw}, key=lambda r: -len(r[0]))
        _real_roots.clear()
        _real_roots[raw] = roots
        register_roots([r for r, _ in roots])  # cheap when unchanged: a set difference in the client
    return roots


def model_name(path: str) -> tuple[str, str] | None:
    """(folder, name) of a file that lies, after resolving links, inside one of ComfyUI's model folders;
    None for a file anywhere else (such a file is none of Hearth's business)."""
    real = os.path.realpath(path)
    for root, folder in _roots():
        if real.startswith(root + os.sep):
            return folder, os.path.relpath(real, root)
    return None


def fetch(folder: str, name: str) -> Loaded:
    """Tensors of `name` in ComfyUI's `folder`: the shared segment, or the client's stock fallback."""
    path = folder_paths.get_full_path_or_raise(folder, name)
    _roots()  # picks up folders added to ComfyUI since the last load
    return load(path)


def safetensors_metadata(path: str) -> dict[str, str] | None:
    """The header's __metadata__ (ComfyUI reads quantisation and model hints there); None for pickles."""
    if not is_cached_kind(path):
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.metadata()
