"""What a sampler run computes on, and the VRAM workspace it needs: the planner's estimate per model family.

The workspace (activations, attention, per-op buffers) follows the work, not the weights: a 512x512 SD1.5
image needs ~160 MiB, a 1024x1024 FLUX image ~2 GiB, 81 frames of Wan 14B at 832x480 ~12 GiB. The estimate
is ComfyUI's own (`BaseModel.memory_required` with PyTorch or xformers attention, the default on NVIDIA),
restated so that the planner needs no ComfyUI:

    latent positions P = batch x latent frames x (height / s) x (width / s)
                         s: the VAE's spatial downscale; latent frames = (frames - 1) // t + 1
    workspace          = 2 x P x 2 bytes x 0.01 x memory_usage_factor  MiB

The first 2 is ComfyUI's: `sampler_helpers.estimate_memory` sizes a doubled batch (conditioned and
unconditioned passes). 2 bytes: a 16-bit compute dtype. `memory_usage_factor`, s and t are the model
family's constants in ComfyUI (`supported_models.py`, `latent_formats.py`); FAMILIES below carries them for
the common families, and the VRAM node builds a Family from the live model instead. A family not known
uses ComfyUI's default factor (2.0) and downscale (8); work not known is the family's native size at
batch 1 (1024x1024 for an unknown family), a figure for one image, not for batches or long videos.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20

COMFY_DEFAULT_FACTOR = 2.0  # supported_models_base.BASE.memory_usage_factor
CFG_PASSES = 2  # estimate_memory doubles the batch: conditioned + unconditioned
COMPUTE_BYTES = 2  # fp16/bf16 activations


@dataclass(frozen=True)
class Work:
    """One sampler run: image size in pixels, images per batch, frames per video (1 for an image)."""

    width: int
    height: int
    batch: int = 1
    frames: int = 1

    def __post_init__(self) -> None:
        if min(self.width, self.height, self.batch, self.frames) < 1:
            raise ValueError(f"bad work: {self.width}x{self.height}, batch {self.batch}, {self.frames} frames")

    def describe(self) -> str:
        frames = f", {self.frames} frames" if self.frames > 1 else ""
        return f"{self.width}x{self.height}{frames}, batch {self.batch}"


@dataclass(frozen=True)
class Family:
    """A model family's workspace constants, as ComfyUI has them."""

    name: str
    memory_usage_factor: float = COMFY_DEFAULT_FACTOR
    spatial: int = 8  # pixels per latent position along each side
    temporal: int = 1  # video frames per latent frame
    native: Work = Work(1024, 1024)  # the work assumed when none is given

    def latent_positions(self, work: Work) -> int:
        frames = (work.frames - 1) // self.temporal + 1
        return work.batch * frames * max(1, work.height // self.spatial) * max(1, work.width // self.spatial)

    def workspace(self, work: Work | None = None) -> int:
        """VRAM bytes for activations while sampling `work` (the native work when None)."""
        positions = self.latent_positions(work or self.native)
        return int(CFG_PASSES * positions * COMPUTE_BYTES * self.memory_usage_factor * MiB / 100)


GENERIC = Family("unknown family")

# ComfyUI 0.28's constants (supported_models.py memory_usage_factor; latent_formats.py downscale ratios).
# Wan 2.1 14B: factor = dim / 2222 with dim 5120.
FAMILIES = {f.name: f for f in (
    Family("sd15", 1.0, native=Work(512, 512)),
    Family("sdxl", 0.8),
    Family("sd3", 1.6),
    Family("flux", 3.1),
    Family("wan21_14b", 5120 / 2222, temporal=4, native=Work(832, 480, frames=81)),
    Family("ltxv", 5.5, spatial=32, temporal=8, native=Work(768, 512, frames=97)),
)}
