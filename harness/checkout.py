"""Finding a ComfyUI checkout and the environment its processes run with."""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

STANDINS = Path(__file__).parent / "standins"
# torch is ours (the CPU build); the stand-ins replace torchvision and torchaudio.
NOT_CHECKED = {"torch", "torchvision", "torchaudio"}


def find_comfyui() -> tuple[Path | None, str]:
    """The checkout at $HEARTH_COMFYUI, else comfy-cli's default workspace; or None and why not."""
    env = os.environ.get("HEARTH_COMFYUI")
    candidate = Path(env).expanduser() if env else Path.home() / "comfy" / "ComfyUI"
    where = "$HEARTH_COMFYUI" if env else "comfy-cli's default workspace"
    if not (candidate / "main.py").is_file() or not (candidate / "comfy").is_dir():
        return None, f"no ComfyUI checkout at {candidate} ({where}); set HEARTH_COMFYUI to one"
    missing = missing_requirements(candidate)
    if missing:
        return None, (f"ComfyUI at {candidate} ({where}) cannot start in this Python: its requirements "
                      f"{', '.join(missing)} are not installed (pip install them, all but torch, torchvision "
                      f"and torchaudio, from its requirements.txt)")
    return candidate.resolve(), f"ComfyUI at {candidate}"


def missing_requirements(checkout: Path) -> list[str]:
    """The essential requirements of the checkout's requirements.txt not installed in this interpreter.

    A checkout whose requirements live in another environment is as good as none: every ComfyUI process
    started from here would die at import.
    """
    try:
        lines = (checkout / "requirements.txt").read_text().splitlines()
    except OSError:
        return []
    missing = []
    for line in lines:
        if "non essential" in line.lower():
            break  # ComfyUI's own marker: what follows it, ComfyUI starts without
        name = re.match(r"[A-Za-z0-9._-]*", line.split("#")[0].strip()).group(0)
        if not name or name.lower() in NOT_CHECKED:
            continue
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def comfy_env(checkout: Path, extra_path: list[Path] = (), *, pack_importable: bool = True,
              **overrides: str | None) -> dict[str, str]:
    """Environment for a process that imports ComfyUI: the torchvision/torchaudio stand-ins come first.

    No build of either matches the CPU torch these tests use; ComfyUI imports both at start-up for models
    that SD1.5 never touches. `pack_importable`: `import comfyui_hearth` finds this checkout (harness/pack.py),
    for a child that uses ComfyUI as a library; a ComfyUI server gets the pack from custom_nodes/ only, as a
    user's does. `overrides` set (or, when None, remove) further variables.
    """
    from .pack import import_root

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDINS), *map(str, extra_path), str(checkout),
                                         *([str(import_root())] if pack_importable else [])])
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
