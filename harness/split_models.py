"""Random-weight split-file models in the FLUX layout, built locally: a diffusion model, a text encoder, a VAE.

The files a FLUX workflow loads separately (UNETLoader, CLIPLoader, VAELoader), with ComfyUI's own key
names and shapes taken from its own classes on the meta device (in a child process with the checkout on
its path, like models.py), then random weights. Nothing is downloaded; the same seed gives the same bytes.

- diffusion model: `comfy.ldm.flux.model.Flux` at FLUX's widths (3072, 24 heads, text context 4096) and
  reduced depth: detection counts the blocks, and `supported_models.Flux` matches on {"image_model": "flux",
  "guidance_embed": True} only, so any depth is a FLUX it accepts (0.3.64 fixes width and context; later
  releases read them from the file). "tiny": 1 double and 1 single block (of 19 and 38), 1.1 GB bf16;
  "bench": 2 and 4, 2.3 GB.
- text encoder: CLIP-L (`text_model.*` keys, fp16, 246 MB), loaded with CLIPLoader as type "sd3": ComfyUI's
  SD3 text model pads CLIP-L's 768-wide sequence to the 4096 FLUX's txt_in takes and gives a 2048-wide
  pooled vector (vector_in). FLUX's own second encoder, T5-XXL, is a fixed 4.8 B-parameter model in ComfyUI
  (9.5 GB fp16): a reduced one is not loadable, a full one does not fit beside its segment and page cache
  on the 24 GB machines here.
- VAE: FLUX's autoencoder (16 latent channels, `encoder.*`/`decoder.*` keys as in ae.safetensors), fp16.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkout import comfy_env
from .models import _building, _random_like

# Detection-shaped FLUX configs (comfy.model_detection: flux); in/out 16 channels, 2x2 patches.
_FLUX_COMMON = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 2048,
                "context_in_dim": 4096, "hidden_size": 3072, "num_heads": 24, "mlp_ratio": 4.0,
                "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True,
                "guidance_embed": True, "txt_ids_dims": []}
FLUX = {"tiny": {**_FLUX_COMMON, "depth": 1, "depth_single_blocks": 1},
        "bench": {**_FLUX_COMMON, "depth": 2, "depth_single_blocks": 4}}
CLIP_TYPE = "sd3"  # the CLIPLoader type that gives FLUX's context and pooled widths from CLIP-L
_AE = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
       "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}

UNET, CLIP_L, VAE = "flux-{shape}.safetensors", "clip_l.safetensors", "flux-ae.safetensors"


@dataclass(frozen=True)
class SplitFolder:
    """diffusion_models/, text_encoders/ and vae/ under `root`, as ComfyUI's folder names have them."""

    root: Path
    unet: str
    clip: str
    vae: str

    def path(self, folder: str, name: str) -> Path:
        return self.root / folder / name

    @property
    def files(self) -> list[Path]:
        return [self.path("diffusion_models", self.unet), self.path("text_encoders", self.clip),
                self.path("vae", self.vae)]


def build_split(checkout: Path, root: Path, shape: str = "tiny", seed: int = 0) -> SplitFolder:
    """The three files under `root` (kept when present; each built under a temporary name first)."""
    folder = SplitFolder(root, UNET.format(shape=shape), CLIP_L, VAE)
    for (sub, name), part in zip([("diffusion_models", folder.unet), ("text_encoders", folder.clip),
                                  ("vae", folder.vae)], ("unet", "clip", "vae"), strict=True):
        out = folder.path(sub, name)
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _building(out)
        package_root = Path(__file__).parents[__name__.count(".")]
        subprocess.run([sys.executable, "-m", __name__, part, shape, str(seed), str(tmp)], cwd=checkout,
                       env=comfy_env(checkout, extra_path=[package_root]), check=True, timeout=1200)
        os.replace(tmp, out)
    return folder


def _child(part: str, shape: str, seed: int, out: str) -> None:
    """Runs in the child, with the ComfyUI checkout as working directory."""
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    from safetensors.torch import save_file

    import comfy.ldm.flux.model
    import comfy.ldm.models.autoencoder
    import comfy.model_detection
    import comfy.ops
    import comfy.sd1_clip

    if part == "unet":
        # Only the parameters this release's FluxParams has (0.3.64 lacks txt_ids_dims and later ones).
        known = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)} | {"image_model"}
        module = comfy.ldm.flux.model.Flux(**{k: v for k, v in FLUX[shape].items() if k in known},
                                           dtype=torch.bfloat16, device="meta",
                                           operations=comfy.ops.disable_weight_init)
        dtype, prefix = torch.bfloat16, ""
    elif part == "clip":
        module = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float16).transformer
        dtype, prefix = torch.float16, ""
    else:
        with torch.device("meta"):
            module = comfy.ldm.models.autoencoder.AutoencodingEngine(
                regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": _AE},
                decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": _AE})
        dtype, prefix = torch.float16, ""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in module.state_dict().items():
        if part == "clip" and not name.startswith("text_model."):
            continue  # CLIP-L files for FLUX hold the text model only (+ projection, which FLUX does not use)
        sd[prefix + name] = _random_like(name, t.shape, gen).to(dtype)
    if part == "unet":
        config = comfy.model_detection.model_config_from_unet(sd, "")
        if type(config).__name__ != "Flux":
            raise SystemExit(f"ComfyUI detects the built diffusion model as {type(config).__name__}, not Flux")
    save_file(sd, out, metadata={"hearth_test_model": json.dumps({"part": part, "shape": shape, "seed": seed})})


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
