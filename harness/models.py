"""Random-weight SD1.5-shaped checkpoints and kohya-format LoRAs that ComfyUI detects, built locally.

The checkpoint's module shapes come from ComfyUI's own classes (UNetModel, the SD1 CLIP-L text model, TAESD
or the KL autoencoder), instantiated on the meta device in a child process that has the checkout on its
path, so this module never imports ComfyUI into the caller. Keys use the original SD checkpoint layout
(`model.diffusion_model.`, `cond_stage_model.transformer.text_model.`, `first_stage_model.`), which is
what CheckpointLoaderSimple detects as SD1.5. Nothing is downloaded; the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkout import comfy_env
from .server import write_extra_model_paths

# The SD1.5 UNet as ComfyUI's detection describes it; "tiny" keeps the real widths (320 channels, context
# 768: detection matches SD15 on those) with one level and one block per level, ~40 M parameters.
_UNET_COMMON = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "use_checkpoint": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "context_dim": 768,
    "num_heads": 8, "use_linear_in_transformer": False, "transformer_depth_middle": 1,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}
UNET = {
    "tiny": {**_UNET_COMMON, "channel_mult": [1], "num_res_blocks": [1], "transformer_depth": [1],
             "transformer_depth_output": [1, 1]},
    "full": {**_UNET_COMMON, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]},
}
_KL_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
           "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}

# kohya names of the CLIP-L layers a LoRA patches, keyed by the module path inside an encoder layer.
_CLIP_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                 "mlp.fc1", "mlp.fc2")
_CLIP_LAYER = "cond_stage_model.transformer.text_model.encoder.layers."
_UNET_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class ModelFolder:
    """checkpoints/ and loras/ under `root`, and the extra_model_paths YAML that shows them to ComfyUI."""

    root: Path
    extra_model_paths: Path

    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / name

    def lora(self, name: str) -> Path:
        return self.root / "loras" / name


def build_models(checkout: Path, root: Path, checkpoint: str, loras: list[str], shape: str = "tiny",
                 rank: int = 8, unet_layers: int | None = None, clip_layers: int | None = None) -> ModelFolder:
    """A ModelFolder at `root` with an SD1.5-shaped checkpoint and one LoRA per name (seeds 1, 2, ...).

    A file already there is kept (a full-size build takes minutes); each is built under a temporary name
    first, so that an interrupted build never passes for a finished one.
    """
    root.mkdir(parents=True, exist_ok=True)
    folder = ModelFolder(root, write_extra_model_paths(root / "extra_model_paths.yaml", root))
    ckpt = folder.checkpoint(checkpoint)
    if not ckpt.exists():
        os.replace(build_checkpoint(checkout, _building(ckpt), shape=shape), ckpt)
    for seed, name in enumerate(loras, start=1):
        out = folder.lora(name)
        if not out.exists():
            os.replace(build_lora(ckpt, _building(out), rank, seed, unet_layers, clip_layers), out)
    return folder


def _building(path: Path) -> Path:
    return path.with_name(f".{path.name}.building.safetensors")


def build_checkpoint(checkout: Path, out: Path, shape: str = "tiny", seed: int = 0) -> Path:
    """Write an SD1.5-shaped fp16 checkpoint with random weights to `out` (in a child process)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    package_root = Path(__file__).parents[__name__.count(".")]  # where `python -m __name__` finds us
    subprocess.run([sys.executable, "-m", __name__, str(out), shape, str(seed)], cwd=checkout,
                   env=comfy_env(checkout, extra_path=[package_root]), check=True, timeout=600)
    return out


def lora_targets(checkpoint: Path) -> dict[str, list[int]]:
    """kohya name -> weight shape of every layer a LoRA trainer targets: UNet attention, CLIP attention/MLP."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    targets = {}
    for k, shape in shapes.items():
        if k.startswith(_UNET_PREFIX) and _is_unet_target(k, shape):
            targets["lora_unet_" + k[len(_UNET_PREFIX):-len(".weight")].replace(".", "_")] = shape
    for k, shape in shapes.items():
        layer = k[len(_CLIP_LAYER):-len(".weight")] if k.startswith(_CLIP_LAYER) and k.endswith(".weight") else ""
        if layer.partition(".")[2] in _CLIP_TARGETS:
            targets["lora_te_text_model_encoder_layers_" + layer.replace(".", "_")] = shape
    return targets


def build_lora(checkpoint: Path, out: Path, rank: int, seed: int, unet_layers: int | None = None,
               clip_layers: int | None = None) -> Path:
    """Write a kohya-format LoRA (lora_down/lora_up/alpha) for `checkpoint`'s attention and MLP layers.

    `unet_layers`/`clip_layers` limit how many target layers of each model get a pair (None: all).
    """
    from safetensors.torch import save_file

    all_targets = lora_targets(checkpoint)
    unet = [k for k in all_targets if k.startswith("lora_unet_")][:unet_layers]
    clip = [k for k in all_targets if k.startswith("lora_te_")][:clip_layers]
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in unet + clip:
        o, i, *kernel = all_targets[name]
        r = min(rank, o, i)
        # delta W = up @ down * alpha / r has about half the spread of the base weight: a visible change.
        down = torch.randn((r, i, *kernel), generator=gen) / math.sqrt(i)
        up = torch.randn((o, r, *kernel), generator=gen) * (0.5 / math.sqrt(r))
        tensors[f"{name}.lora_down.weight"] = down.half()
        tensors[f"{name}.lora_up.weight"] = up.half()
        tensors[f"{name}.alpha"] = torch.tensor(float(r)).half()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out


def _is_unet_target(key: str, shape: list[int]) -> bool:
    # Linear layers of the transformer blocks and the 1x1 proj_in/proj_out convolutions, as kohya trains.
    if not key.endswith(".weight") or not (len(shape) == 2 or (len(shape) == 4 and shape[2:] == [1, 1])):
        return False
    return ".transformer_blocks." in key or key.endswith((".proj_in.weight", ".proj_out.weight"))


def _random_like(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Weights with sane scales: norms near 1, biases near 0, matrices ~ N(0, 1/fan_in)."""
    if len(shape) == 0:
        return torch.ones(())
    if len(shape) == 1:
        noise = torch.randn(shape, generator=gen)
        return 1 + 0.05 * noise if name.endswith(".weight") else 0.02 * noise
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def _child(out: str, shape: str, seed: int) -> None:
    """Runs in the child, with the ComfyUI checkout as working directory (first on sys.path under -m)."""
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    from safetensors.torch import save_file

    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.model_detection
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd

    meta = {"device": "meta", "dtype": torch.float16}
    parts = {
        _UNET_PREFIX: openaimodel.UNetModel(**UNET[shape], operations=comfy.ops.disable_weight_init, **meta),
        "cond_stage_model.": comfy.sd1_clip.SDClipModel(**meta),
        "first_stage_model.": (comfy.taesd.taesd.TAESD() if shape == "tiny" else
                               comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=_KL_VAE, embed_dim=4)),
    }
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, module in parts.items():
        for name, t in module.to("meta").state_dict().items():
            if prefix == "cond_stage_model." and not name.startswith("transformer.text_model."):
                continue  # projection and logit scale are not part of an SD1.5 checkpoint
            sd[prefix + name] = _random_like(name, t.shape, gen).to(torch.float16)
    config = comfy.model_detection.model_config_from_unet(sd, _UNET_PREFIX)
    if type(config).__name__ != "SD15":
        raise SystemExit(f"ComfyUI detects the built checkpoint as {type(config).__name__}, not SD15")
    save_file(sd, out, metadata={"hearth_test_model": json.dumps({"shape": shape, "seed": seed})})


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
