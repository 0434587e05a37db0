"""Synthetic checkpoints with SD1.5's tensor count and size profile (no download, random fp16 weights)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

# (shape, count) groups that add up to SD1.5's profile: ~1,130 tensors, ~2.1 GB in fp16
# (UNet convs and attention, CLIP-L layers, VAE convs, and the many small norms and biases).
SD15_PROFILE = [
    ((1280, 1280, 3, 3), 38), ((640, 640, 3, 3), 8), ((320, 320, 3, 3), 8), ((1280, 640, 3, 3), 3),
    ((640, 320, 3, 3), 3), ((1280, 1280), 40), ((640, 640), 40), ((320, 320), 40), ((5120, 1280), 8),
    ((1280, 5120), 8), ((2560, 640), 8), ((640, 2560), 8), ((1280, 768), 16), ((640, 768), 16),
    ((320, 768), 16), ((768, 768), 48), ((3072, 768), 12), ((768, 3072), 12), ((49408, 768), 1),
    ((512, 512, 3, 3), 24), ((256, 256, 3, 3), 8), ((128, 128, 3, 3), 8), ((1280,), 250), ((640,), 200),
    ((320,), 200), ((768,), 60), ((512,), 40), ((3072,), 12),
]


def build(path: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """Write an SD1.5-shaped fp16 checkpoint; `scale` < 1 shrinks the big tensors (same tensor count)."""
    if path.exists():
        return path
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for gi, (shape, count) in enumerate(SD15_PROFILE):
        if scale != 1.0 and len(shape) > 1:
            shape = (max(1, int(shape[0] * scale)),) + shape[1:]
        for i in range(count):
            sd[f"model.group{gi}.t{i}.weight"] = torch.randn(shape, generator=g, dtype=torch.float32).half()
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(tmp), metadata={"format": "pt", "hearth": "synthetic SD1.5 profile"})
    os.replace(tmp, path)
    return path
