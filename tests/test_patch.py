"""comfyui_hearth.patch(): safetensors, diffusers and transformers loads through Hearth, undone by unpatch().

Each case runs in a real subprocess client of a real daemon. The diffusers and transformers models are tiny
ones built in the test from random weights and saved locally (HF_HUB_OFFLINE=1: no hub is ever asked);
outputs through the hook must equal stock's, and the daemon's counters show the loads went through it.
"""

from __future__ import annotations

import importlib.util

import pytest

from conftest import make_model

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def _needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed here (pip install {module} to run this test)")


def _run(daemon, code: str) -> dict:
    rc, said, err = daemon.run_client(code, env=OFFLINE, timeout=240)
    assert rc == 0, err[-4000:]
    return {k: v for line in said for k, v in line.items()}


def test_nothing_changes_without_the_call(daemon):
    path = make_model(daemon.models / "m.safetensors")
    found = _run(daemon, f"""
        import safetensors
        stock = (safetensors.torch.load_file, safetensors.safe_open)
        import comfyui_hearth
        comfyui_hearth.load_state_dict  # the library imported and used
        sd = safetensors.torch.load_file({str(path)!r})
        say(same=(safetensors.torch.load_file, safetensors.safe_open) == stock, keys=len(sd))
    """)
    assert found["same"] and found["keys"] > 0
    assert daemon.status()["stats"]["misses"] == 0  # the daemon was never asked


def test_load_file_and_safe_open_go_through_hearth_until_unpatch(daemon, tmp_path):
    path = make_model(daemon.models / "m.safetensors")
    outside = make_model(tmp_path / "outside.safetensors", seed=3)  # not in the daemon's folders
    (tmp_path / "later.py").write_text("from safetensors import safe_open\nfrom safetensors.torch import load_file\n")
    found = _run(daemon, f"""
        import sys
        import safetensors
        from safetensors.torch import load_file as bound_before
        # Kept in a dict: patch() rebinds every module attribute that is a stock function, __main__'s too.
        stock = {{"load": safetensors.torch.load_file, "open": safetensors.safe_open}}
        reference = stock["load"]({str(path)!r})
        with stock["open"]({str(path)!r}, "pt") as f:
            ref_keys, ref_offsets, ref_meta = f.keys(), f.offset_keys(), f.metadata()
            ref_slice = f.get_slice(ref_keys[0])
            ref_slice = (ref_slice.get_shape(), ref_slice.get_dtype(), ref_slice[...])
        import comfyui_hearth
        comfyui_hearth.patch()
        sd = safetensors.torch.load_file({str(path)!r})
        from_bound = sys.modules[__name__].bound_before({str(path)!r})
        with safetensors.safe_open({str(path)!r}, framework="pt", device="cpu") as f:
            kind = type(f).__name__
            keys, offsets, meta = f.keys(), f.offset_keys(), f.metadata()
            tensors = {{k: f.get_tensor(k) for k in keys}}
            s = f.get_slice(keys[0])
            sl = (s.get_shape(), s.get_dtype(), s[...])
            try:
                f.get_tensor("no such tensor")
                missing = None
            except safetensors.SafetensorError as e:
                missing = str(e)
        outside = safetensors.torch.load_file({str(outside)!r})  # refused by the daemon: stock, no recursion
        sys.path.insert(0, {str(tmp_path)!r})
        import later  # imported while patched: binds Hearth's
        say(load_file=same(sd, reference), bound=same(from_bound, reference), kind=kind,
            keys=keys == ref_keys, offsets=offsets == ref_offsets, meta=meta == ref_meta,
            tensors=same(tensors, reference),
            slice=sl[:2] == ref_slice[:2] and bool((sl[2] == ref_slice[2]).all()), missing=missing,
            outside=len(outside), later_patched=later.load_file is not stock["load"],
            bound_patched=sys.modules[__name__].bound_before is not stock["load"])
        comfyui_hearth.unpatch()
        say(restored=(safetensors.torch.load_file is stock["load"] and safetensors.safe_open is stock["open"]
                      and sys.modules[__name__].bound_before is stock["load"] and later.load_file is stock["load"]
                      and later.safe_open is stock["open"]))
        comfyui_hearth.unpatch()  # twice is fine
        with safetensors.safe_open({str(path)!r}, "pt") as f:
            say(after=type(f).__name__)
    """)
    assert all(found[k] for k in ("load_file", "bound", "keys", "offsets", "meta", "tensors", "slice")), found
    assert found["kind"] == "SegmentFile" and "no such tensor" in found["missing"]
    assert found["outside"] > 0 and found["later_patched"] and found["bound_patched"] and found["restored"]
    assert found["after"] != "SegmentFile"
    stats = daemon.status()["stats"]
    assert stats["misses"] == 1 and stats["hits"] >= 2, stats  # one fill, then the same segment


_DIFFUSERS = """
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained({folder!r})

    def output():
        pipe = DDPMPipeline.from_pretrained({folder!r}, local_files_only=True)
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return pipe.unet(x, 10).sample
"""


@_needs("diffusers")
def test_a_diffusers_pipeline_from_pretrained_through_hearth_gives_stock_outputs(daemon):
    folder = daemon.models / "ddpm"
    found = _run(daemon, _DIFFUSERS.format(folder=str(folder)) + """
    stock = output()
    import comfyui_hearth
    comfyui_hearth.patch()
    ours = output()
    comfyui_hearth.unpatch()
    say(equal=torch.equal(stock, ours), spread=float(stock.std()))
    """)
    assert found["equal"] and found["spread"] > 0
    assert daemon.segment(folder / "unet" / "diffusion_pytorch_model.safetensors") is not None


@_needs("transformers")
def test_a_transformers_model_from_pretrained_through_hearth_gives_stock_outputs(daemon):
    folder = daemon.models / "bert"
    found = _run(daemon, f"""
        import torch
        from transformers import BertConfig, BertModel
        torch.manual_seed(0)
        config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64)
        BertModel(config).save_pretrained({str(folder)!r}, safe_serialization=True)
        ids = torch.tensor([[1, 5, 7, 2, 9]])

        def output():
            model = BertModel.from_pretrained({str(folder)!r}, local_files_only=True).eval()
            with torch.no_grad():
                return model(input_ids=ids).last_hidden_state

        stock = output()
        import comfyui_hearth
        comfyui_hearth.patch()
        ours = output()
        comfyui_hearth.unpatch()
        say(equal=torch.equal(stock, ours), spread=float(stock.std()))
    """)
    assert found["equal"] and found["spread"] > 0
    assert daemon.segment(folder / "model.safetensors") is not None
