"""The VRAM planner over a table of hardware profiles and models, its refusals and its CLI.

Expected plans are worked out by hand below from the planner's documented estimates; nothing here
calls the planner's own arithmetic.
"""

import argparse
import json
import os

import pytest

from comfyui_hearth.cli import plan as cli
from comfyui_hearth.core.errors import BadHeader, HearthError
from comfyui_hearth.planner import (
    FAMILIES,
    Family,
    Hardware,
    ModelSpec,
    PlanImpossible,
    Work,
    model_spec_from_file,
    plan,
)

GiB = 2**30
GB = 10**9

# First principles. The planner's documented estimates, restated:
#   V   usable VRAM = card - 1 GiB reserve (ComfyUI's 0.4-0.7 GiB EXTRA_RESERVED_VRAM + CUDA context).
#   W   weights on the GPU: 16-bit, or 8-bit for an FP8 file.
#   S   the work's workspace, ComfyUI's estimate: 2 (cfg) x P latent positions x 2 bytes x factor / 100 MiB,
#       P = batch x latent frames x (h / 8) x (w / 8). Family and work unknown: factor 2.0 at 1024x1024,
#       batch 1: 2 x 16384 x 2 x 2.0 / 100 = 1310.72 MiB = 1.28 GiB.
#   A   workspace of a plan with resident weights = max(0.8 GiB, S)   (0.8 GiB: ComfyUI's minimum_inference_memory)
#   2L  two streamed layers = 2 x the largest tensor at 16 bits, or 2 x 2 % of W when it is not known.
# Rules:
#   full_gpu    W + A <= V
#   fp8         W/2 + A <= V; CUDA with compute capability >= 8.9; a 16-bit model (an FP8 file gains nothing)
#   partial     CUDA; resident R = V - A - 2L >= 10 % of W; RAM >= W - R (the streamed part)
#   sequential  CUDA; 2L + S <= V; RAM >= W   (no 0.8 GiB floor: nothing is loaded)
#   cpu         RAM >= 4 bytes x params (ComfyUI upcasts the diffusion model to fp32 on CPU) + A
#   MPS shares RAM with the GPU: no FP8, nothing to stream from (no partial, no sequential).
#
# The TABLE's models carry no family and no largest tensor (what `hearth plan SIZE` knows): A = S = 1.28,
# 2L = 4 % of W. Sized as published (decimal GB) and converted to GiB (/ 1.0737):
#   SD1.5 fp16 2.0 GB   W 1.863  2L 0.075   full 3.143   fp8 0.931+1.28 = 2.211
#                       partial needs V >= 1.28+0.075+0.186 = 1.541   sequential 1.355   cpu 3.725+1.28 = 5.005
#   SDXL UNet fp16 5.1 GB   W 4.750  2L 0.190   full 6.030   fp8 2.375+1.28 = 3.655   partial V >= 1.945
#                       sequential 1.470   cpu 9.500+1.28 = 10.78
#   SDXL checkpoint 6.9 GB planned whole   W 6.426  2L 0.257   full 7.706   fp8 4.493   partial V >= 2.180
#                       cpu 12.85+1.28 = 14.13
#   FLUX dev fp16 23.8 GB   W 22.165  2L 0.887   full 23.445   fp8 11.083+1.28 = 12.363
#                       partial V >= 1.28+0.887+2.217 = 4.384   sequential 2.167   cpu 44.33+1.28 = 45.61
#   FLUX dev fp8 11.9 GB (1 byte per weight, same 11.9e9 params)   W 11.083  2L 0.443   full 12.363
#                       fp8: n/a   partial V >= 1.28+0.443+1.108 = 2.831   sequential 1.723   cpu 45.61
#   Wan 14B video fp16 28 GB   W 26.077  2L 1.043   full 27.357   fp8 13.039+1.28 = 14.319
#                       partial V >= 1.28+1.043+2.608 = 4.931   sequential 2.323   cpu 52.15+1.28 = 53.43
SD15 = ModelSpec(int(2.0 * GB), 2, name="SD1.5")
SDXL = ModelSpec(int(5.1 * GB), 2, name="SDXL UNet")
SDXL_CKPT = ModelSpec(int(6.9 * GB), 2, name="SDXL checkpoint")
FLUX16 = ModelSpec(int(23.8 * GB), 2, name="FLUX dev fp16")
FLUX8 = ModelSpec(int(11.9 * GB), 1, name="FLUX dev fp8")
WAN14 = ModelSpec(int(28.0 * GB), 2, name="Wan 14B")

REFUSED = "refused"

# (vram GiB (0: no GPU), compute capability, RAM GiB, model, expected, (VRAM, RAM, resident) GiB or None)
TABLE = [
    # No GPU, 16 GiB RAM, SD1.5: cpu needs 5.005 <= 16.
    (0, None, 16, SD15, "cpu", (0, 5.005, 0)),
    # No GPU, 16 GiB, SDXL UNet: cpu 10.78 <= 16.
    (0, None, 16, SDXL, "cpu", None),
    # No GPU, 8 GiB, SDXL UNet: cpu 10.78 > 8, nothing else without a GPU.
    (0, None, 8, SDXL, REFUSED, None),
    # No GPU, 32 GiB, FLUX fp16: fp32 on CPU 45.61 > 32.
    (0, None, 32, FLUX16, REFUSED, None),
    # No GPU, 64 GiB, FLUX fp8: CPU has no FP8, upcast to fp32: 45.61 <= 64.
    (0, None, 64, FLUX8, "cpu", None),
    # 1 GiB GPU: V = 0, nothing on the GPU; SD1.5 on CPU 5.005 <= 16.
    (1, (6, 1), 16, SD15, "cpu", None),
    # 2 GiB, cc 6.1, SD1.5 of unknown family: V 1; partial needs 1.541, sequential 1.355 > 1 with the
    # conservative 1.28 GiB workspace: cpu. (Knowing the family and the work streams it: test_work_*.)
    (2, (6, 1), 16, SD15, "cpu", None),
    # 3 GiB, cc 6.1, SD1.5: V 2; full 3.14 > 2; no FP8; R = 2 - 1.28 - 0.075 = 0.645 >= 0.186, RAM 1.218.
    (3, (6, 1), 16, SD15, "partial", (2.0, 1.218, 0.645)),
    # 4 GiB, cc 7.5, SDXL UNet: V 3; full 6.03 > 3; no FP8; R = 3 - 1.28 - 0.19 = 1.53 >= 0.475, RAM 3.22.
    (4, (7, 5), 16, SDXL, "partial", (3.0, 3.220, 1.530)),
    # 4 GiB, cc 8.6, 64 GiB, FLUX fp16: V 3; partial needs 4.384 > 3: too small for any resident share;
    # sequential 2.167 <= 3 and RAM 22.17 <= 64 -> streams rather than falling back to the CPU.
    (4, (8, 6), 64, FLUX16, "sequential", (2.167, 22.165, 0)),
    # 5 GiB, cc 8.6, 32 GiB, Wan 14B: V 4; partial needs 4.931 > 4; sequential 2.323 <= 4, RAM 26.08 <= 32.
    (5, (8, 6), 32, WAN14, "sequential", (2.323, 26.077, 0)),
    # 6 GiB, cc 8.6, SD1.5: full 3.143 <= 5.
    (6, (8, 6), 16, SD15, "full_gpu", (3.143, 0, 1.863)),
    # 6 GiB, cc 8.6, SDXL UNet: full 6.03 > 5; no FP8 on 8.6; R = 5 - 1.47 = 3.53 >= 0.475, RAM 1.22.
    (6, (8, 6), 16, SDXL, "partial", None),
    # 6 GiB, cc 8.9, SDXL UNet: full 6.03 > 5; fp8 3.655 <= 5.
    (6, (8, 9), 16, SDXL, "fp8", (3.655, 0, 2.375)),
    # 6 GiB, cc 8.6, 32 GiB, FLUX fp16: full and fp8 no; partial needs 4.384 <= 5: R = 5 - 2.167 = 2.833,
    # RAM 22.165 - 2.833 = 19.33 <= 32.
    (6, (8, 6), 32, FLUX16, "partial", (5.0, 19.332, 2.833)),
    # 6 GiB, cc 8.6, 32 GiB, Wan 14B: partial needs 4.931 <= 5: R = 5 - 2.323 = 2.677 >= 2.608, RAM 23.40.
    (6, (8, 6), 32, WAN14, "partial", None),
    # 8 GiB, cc 8.6, 16 GiB, SDXL checkpoint: full 7.706 > 7; R = 7 - 1.28 - 0.257 = 5.46, RAM 0.96.
    (8, (8, 6), 16, SDXL_CKPT, "partial", None),
    # 8 GiB, cc 8.6, 16 GiB RAM, FLUX fp16: partial R = 7 - 2.167 = 4.833 but streams 22.165 - 4.833 = 17.33
    # > 16; sequential needs 22.17 > 16 of RAM; cpu 45.61 > 16. Small RAM makes FLUX impossible.
    (8, (8, 6), 16, FLUX16, REFUSED, None),
    # Same with 32 GiB RAM: 17.33 <= 32 -> partial.
    (8, (8, 6), 32, FLUX16, "partial", (7.0, 17.332, 4.833)),
    # 8 GiB, cc 8.9: fp8 needs 12.363 > 7 -> still partial.
    (8, (8, 9), 32, FLUX16, "partial", None),
    # 8 GiB, cc 8.6, FLUX fp8: full 12.363 > 7; fp8 gains nothing; R = 7 - 1.28 - 0.443 = 5.277 >= 1.108,
    # RAM 11.083 - 5.277 = 5.806.
    (8, (8, 6), 32, FLUX8, "partial", (7.0, 5.806, 5.277)),
    # 12 GiB, cc 8.6, 16 GiB, FLUX fp8: full 12.363 > 11; R = 11 - 1.723 = 9.277, RAM 1.81.
    (12, (8, 6), 16, FLUX8, "partial", None),
    # 12 GiB, cc 8.9, 16 GiB, FLUX fp16: fp8 12.363 > 11; R = 11 - 2.167 = 8.833, RAM 13.33 <= 16.
    (12, (8, 9), 16, FLUX16, "partial", (11.0, 13.332, 8.833)),
    # 12 GiB, cc 8.9, SDXL checkpoint: full 7.706 <= 11.
    (12, (8, 9), 16, SDXL_CKPT, "full_gpu", None),
    # 16 GiB, cc 8.9, FLUX fp16: full 23.445 > 15; fp8 12.363 <= 15.
    (16, (8, 9), 32, FLUX16, "fp8", (12.363, 0, 11.083)),
    # 16 GiB, cc 8.6, FLUX fp16: no FP8; R = 15 - 2.167 = 12.833, RAM 9.33.
    (16, (8, 6), 32, FLUX16, "partial", None),
    # 16 GiB, cc 8.9, FLUX fp8: full 12.363 <= 15.
    (16, (8, 9), 32, FLUX8, "full_gpu", None),
    # 16 GiB, cc 8.6, FLUX fp8: full 12.363 <= 15 -- FP8 *storage* runs anywhere (upcast per op).
    (16, (8, 6), 32, FLUX8, "full_gpu", None),
    # 16 GiB, cc 7.5 (T4), Wan 14B: full 27.357 > 15; no FP8; R = 15 - 2.323 = 12.677 >= 2.608, RAM 13.40.
    (16, (7, 5), 32, WAN14, "partial", None),
    # 24 GiB, cc 8.6 (3090), FLUX fp16: full 23.445 > 23; no FP8; R = 23 - 2.167 = 20.833, RAM 1.33.
    (24, (8, 6), 64, FLUX16, "partial", (23.0, 1.332, 20.833)),
    # 24 GiB, cc 8.9 (4090), FLUX fp16: fp8 12.363 <= 23.
    (24, (8, 9), 64, FLUX16, "fp8", None),
    # 24 GiB, cc 8.9, Wan 14B: full 27.357 > 23; fp8 14.319 <= 23.
    (24, (8, 9), 64, WAN14, "fp8", None),
    # 24 GiB, cc 8.6, 16 GiB RAM, Wan 14B: R = 23 - 2.323 = 20.677, RAM 26.077 - 20.677 = 5.40 <= 16.
    (24, (8, 6), 16, WAN14, "partial", (23.0, 5.400, 20.677)),
    # 48 GiB, cc 8.6 (A6000), Wan 14B: full 27.357 <= 47.
    (48, (8, 6), 64, WAN14, "full_gpu", (27.357, 0, 26.077)),
    # 80 GiB, cc 9.0 (H100), Wan 14B: full 27.357 <= 79.
    (80, (9, 0), 128, WAN14, "full_gpu", None),
    # 80 GiB, cc 8.0 (A100), 16 GiB RAM, FLUX fp16: full 23.445 <= 79; a full load needs no RAM to run.
    (80, (8, 0), 16, FLUX16, "full_gpu", None),
]


def _profile(vram, cc, ram, kind="cuda"):
    return Hardware.profile(vram * GiB, ram * GiB, cc, kind)


@pytest.mark.parametrize("vram,cc,ram,model,expected,numbers", TABLE,
                         ids=[f"{v}GiB-cc{cc}-ram{r}-{m.name}" for v, cc, r, m, _, _ in TABLE])
def test_table(vram, cc, ram, model, expected, numbers):
    hw = _profile(vram, cc, ram)
    if expected == REFUSED:
        with pytest.raises(PlanImpossible):
            plan(model, hw)
        return
    p = plan(model, hw)
    assert p.strategy == expected, p.explanation
    if numbers:
        got = (p.vram_bytes / GiB, p.ram_bytes / GiB, p.resident_bytes / GiB)
        assert got == pytest.approx(numbers, abs=0.01), p.explanation


def test_table_is_broad():
    assert len(TABLE) >= 20
    assert {v for v, *_ in TABLE} >= {0, 6, 8, 12, 16, 24, 48, 80}
    assert {e for *_, e, _ in TABLE} == {"full_gpu", "fp8", "partial", "sequential", "cpu", REFUSED}


@pytest.mark.parametrize("vram,model,expected", [
    # Apple MPS, unified memory. 32 GiB: V 31 >= FLUX fp16 full 23.445.
    (32, FLUX16, "full_gpu"),
    # 16 GiB: V 15 >= FLUX fp8 full 12.363.
    (16, FLUX8, "full_gpu"),
    # 16 GiB, FLUX fp16: full 23.445 > 15, no FP8 and nothing to stream on MPS, cpu 45.61 > 16.
    (16, FLUX16, REFUSED),
])
def test_mps(vram, model, expected):
    hw = _profile(vram, None, vram, kind="mps")
    if expected == REFUSED:
        with pytest.raises(PlanImpossible, match="MPS"):
            plan(model, hw)
    else:
        assert plan(model, hw).strategy == expected


def test_text_encoder_stays_16_bit_on_cpu():
    # T5-XXL fp16, 9.5 GB = 8.848 GiB, A = 1.28 (no family, no work). On CPU a text encoder keeps its
    # 16 bits: 8.848 + 1.28 = 10.13 <= 16. A diffusion model of that size is upcast: 17.70 + 1.28 > 16.
    hw = _profile(0, None, 16)
    p = plan(ModelSpec(int(9.5 * GB), 2, kind="text_encoder"), hw)
    assert p.strategy == "cpu" and p.ram_bytes / GiB == pytest.approx(10.128, abs=0.01)
    with pytest.raises(PlanImpossible):
        plan(ModelSpec(int(9.5 * GB), 2), hw)


# --- the work: the workspace follows the image or video, not the weights ---
#
# Models as the VRAM node describes them: with their family and their largest tensor (published shares:
# SD1.5 1.7 %, SDXL 0.6 %, FLUX 0.3 %, Wan 14B 0.5 % of the weights).
#   S = 0.04 x P x factor MiB (2 cfg passes x 2 bytes / 100), P = batch x latent frames x h/8 x w/8
#   SD1.5 (factor 1.0) 512x512: P 4096 -> 163.84 MiB = 0.160 GiB; batch 8: 1.280 GiB
#   SDXL (0.8) 1024x1024: P 16384 -> 524.29 MiB = 0.512 GiB
#   FLUX (3.1) 1024x1024: 2031.6 MiB = 1.984 GiB; 512x512: 0.496 GiB; 1024x1024 batch 4: 7.936 GiB
#   Wan 14B (5120/2222 = 2.3042) 832x480, 81 frames: 21 latent frames x 60 x 104 = 131040 -> 11.795 GiB;
#                                33 frames: 9 x 6240 = 56160 -> 5.055 GiB
#   2L: SD1.5 2 x 34e6 B = 0.0633 GiB; SDXL 2 x 30.6e6 = 0.0570; FLUX 2 x 71.4e6 = 0.1330; Wan 2 x 140e6 = 0.2608
SD15_F = ModelSpec(int(2.0 * GB), 2, name="SD1.5", family=FAMILIES["sd15"], largest_bytes=34_000_000)
SDXL_F = ModelSpec(int(5.1 * GB), 2, name="SDXL UNet", family=FAMILIES["sdxl"], largest_bytes=30_600_000)
FLUX_F = ModelSpec(int(23.8 * GB), 2, name="FLUX dev fp16", family=FAMILIES["flux"], largest_bytes=71_400_000)
WAN_F = ModelSpec(int(28.0 * GB), 2, name="Wan 14B", family=FAMILIES["wan21_14b"], largest_bytes=140_000_000)

# (vram GiB, cc, RAM GiB, model, work, expected, (VRAM, RAM, resident) GiB or None)
WORK_TABLE = [
    # 4 GiB card, FLUX at 1024x1024: V 3; full, fp8 (cc 8.6) no; partial needs 2.2165 + 0.133 + 1.984
    # = 4.334 > 3; sequential 0.133 + 1.984 = 2.117 <= 3 and RAM 22.17 <= 64: streams, not the CPU.
    (4, (8, 6), 64, FLUX_F, Work(1024, 1024), "sequential", (2.117, 22.165, 0)),
    # The same card at batch 4: sequential 0.133 + 7.936 = 8.07 > 3 -> cpu, 44.33 + 7.936 = 52.27 <= 64.
    (4, (8, 6), 64, FLUX_F, Work(1024, 1024, batch=4), "cpu", (0, 52.270, 0)),
    # 2 GiB card, SD1.5 at 512x512: V 1; full 1.863 + 0.8 (0.16 < floor) > 1; no FP8 on 6.1; partial
    # 0.186 + 0.063 + 0.8 = 1.05 > 1; sequential 0.063 + 0.160 = 0.223 <= 1.
    (2, (6, 1), 16, SD15_F, Work(512, 512), "sequential", (0.223, 1.863, 0)),
    # At batch 8: sequential 0.063 + 1.28 = 1.343 > 1 -> cpu 3.725 + 1.28 = 5.005.
    (2, (6, 1), 16, SD15_F, Work(512, 512, batch=8), "cpu", (0, 5.005, 0)),
    # SD1.5 without the work: its native 512x512, batch 1 -- the same plan as the first SD1.5 row.
    (2, (6, 1), 16, SD15_F, None, "sequential", (0.223, 1.863, 0)),
    # 24 GiB cc 8.6, FLUX at 512x512: full 22.165 + 0.8 (0.496 < floor) = 22.965 <= 23.
    (24, (8, 6), 64, FLUX_F, Work(512, 512), "full_gpu", (22.965, 0, 22.165)),
    # ... at 1024x1024: full 22.165 + 1.984 = 24.15 > 23; R = 23 - 1.984 - 0.133 = 20.883, RAM 1.282.
    (24, (8, 6), 64, FLUX_F, Work(1024, 1024), "partial", (23.0, 1.282, 20.883)),
    # 6 GiB cc 8.6, SDXL at 1024x1024: full 4.750 + 0.8 (0.512 < floor) = 5.55 > 5; R = 5 - 0.8 - 0.057 = 4.143.
    (6, (8, 6), 16, SDXL_F, Work(1024, 1024), "partial", (5.0, 0.607, 4.143)),
    # 24 GiB cc 8.9, Wan 14B, 81 frames (its native work, not given): full 26.08 + 11.795 > 23; fp8
    # 13.039 + 11.795 = 24.83 > 23; R = 23 - 11.795 - 0.261 = 10.944 >= 2.608, RAM 26.077 - 10.944 = 15.13.
    (24, (8, 9), 64, WAN_F, None, "partial", (23.0, 15.133, 10.944)),
    # ... 33 frames: fp8 13.039 + 5.055 = 18.09 <= 23.
    (24, (8, 9), 64, WAN_F, Work(832, 480, frames=33), "fp8", (18.094, 0, 13.039)),
]


@pytest.mark.parametrize("vram,cc,ram,model,work,expected,numbers", WORK_TABLE,
                         ids=[f"{v}GiB-{m.name}-{w.describe() if w else 'native'}"
                              for v, _, _, m, w, _, _ in WORK_TABLE])
def test_work_table(vram, cc, ram, model, work, expected, numbers):
    p = plan(model, _profile(vram, cc, ram), work=work)
    assert p.strategy == expected, p.explanation
    got = (p.vram_bytes / GiB, p.ram_bytes / GiB, p.resident_bytes / GiB)
    assert got == pytest.approx(numbers, abs=0.01), p.explanation


def test_workspace_estimates_by_hand():
    # 2 x P x 2 bytes x factor / 100 MiB, worked out above.
    assert FAMILIES["sd15"].workspace(Work(512, 512)) == int(163.84 * 2**20)
    assert FAMILIES["flux"].workspace(Work(1024, 1024)) == int(2031.616 * 2**20)
    assert FAMILIES["wan21_14b"].workspace() / GiB == pytest.approx(11.795, abs=0.001)  # 81 frames native
    # A 30-frame clip has (30 - 1) // 4 + 1 = 8 latent frames; odd sizes floor like ComfyUI's empty latents.
    assert FAMILIES["wan21_14b"].latent_positions(Work(833, 487, frames=30)) == 8 * 60 * 104
    # A family built from a live model's constants (what the node does): Flux2-like, 16x downscale.
    assert Family("Flux2", 12.4, spatial=16).latent_positions(Work(1024, 1024, batch=2)) == 2 * 64 * 64
    with pytest.raises(ValueError):
        Work(0, 512)
    with pytest.raises(ValueError):
        ModelSpec(GB, largest_bytes=2 * GB)


def test_work_is_in_the_explanation():
    text = plan(FLUX_F, _profile(24, (8, 6), 64), work=Work(1024, 1024, batch=2)).explanation
    assert text.endswith("Workspace: 4.0 GiB for 1024x1024, batch 2 (flux estimate)."), text  # 2 x 1.984
    text = plan(WAN_F, _profile(80, (9, 0), 128)).explanation
    assert "832x480, 81 frames, batch 1 (wan21_14b estimate, work not given: assumed)" in text


def test_explanation_names_the_next_better_strategy_and_why():
    # 24 GiB cc 8.6, FLUX fp16 -> partial. Next better: fp8 (no: cc 8.6), then full_gpu (23.4 > 23.0).
    text = plan(FLUX16, _profile(24, (8, 6), 64)).explanation
    assert "partial" in text and "8.9" in text and "8.6" in text and "23.4 GiB" in text and "23.0 GiB" in text
    assert text.index("Not fp8") < text.index("Not full_gpu")
    # It ends with the workspace it assumed, and says the work was not given.
    assert text.endswith("Workspace: 1.3 GiB for 1024x1024, batch 1 (unknown family estimate, work not given: "
                         "assumed)."), text
    # 16 GiB cc 8.9 -> fp8; next better is full_gpu, 23.4 GiB > 15.0 usable.
    text = plan(FLUX16, _profile(16, (8, 9), 32)).explanation
    assert "Not full_gpu" in text and "23.4 GiB" in text and "15.0 GiB" in text
    # The best plan has nothing better to explain away.
    assert "Not " not in plan(SD15, _profile(24, (8, 9), 64)).explanation


def test_budget_caps_vram():
    # 24 GiB cc 8.9 but an 8 GiB budget: V = min(23, 8) = 8; fp8 12.363 > 8; R = 8 - 2.167 = 5.833.
    p = plan(FLUX16, _profile(24, (8, 9), 64), budget=8 * GiB)
    assert p.strategy == "partial"
    assert p.resident_bytes / GiB == pytest.approx(5.833, abs=0.01)
    assert "budget" in p.explanation


def test_impossible_budget_is_refused_with_what_fits():
    # A 2 GiB budget on a 24 GiB cc 8.9 card: sequential needs 2.167 > 2, cpu 45.61 > 16. Without the
    # budget fp8 fits (12.363 <= 23); a GPU with 2.167 + 1 reserve = 3.2 GiB free would do sequential.
    with pytest.raises(PlanImpossible) as err:
        plan(FLUX16, _profile(24, (8, 9), 16), budget=2 * GiB)
    message = err.value.message
    assert "Without the VRAM budget it would run as fp8" in message
    assert "3.2 GiB free" in message and "45.6 GiB of RAM" in message
    assert err.value.code == "plan_impossible" and isinstance(err.value, HearthError)
    assert err.value.to_dict()["error"]["code"] == "plan_impossible"


def test_reserve():
    # 8 GiB, SDXL checkpoint: full 7.706 > 7 with the 1 GiB default reserve, <= 8 with none.
    assert plan(SDXL_CKPT, _profile(8, (8, 6), 16)).strategy == "partial"
    assert plan(SDXL_CKPT, _profile(8, (8, 6), 16), reserve=0).strategy == "full_gpu"
    # A reserve larger than the card leaves nothing: SD1.5 goes to the CPU.
    assert plan(SD15, _profile(8, (8, 6), 16), reserve=9 * GiB).strategy == "cpu"


def test_forced_strategies():
    hw = _profile(24, (8, 6), 64)
    with pytest.raises(PlanImpossible, match="8.9") as err:
        plan(FLUX16, hw, strategy="fp8")
    assert err.value.alternatives == ("partial", "sequential", "cpu")  # cpu: 45.61 <= 64
    with pytest.raises(PlanImpossible, match="already FP8"):
        plan(FLUX8, _profile(24, (8, 9), 64), strategy="fp8")
    with pytest.raises(PlanImpossible, match="What fits: cpu"):
        plan(SD15, _profile(0, None, 16), strategy="partial")
    # A worse strategy that works is granted, and the explanation says the better one would fit.
    p = plan(SD15, hw, strategy="sequential")
    assert p.strategy == "sequential" and p.resident_bytes == 0
    assert "full_gpu: it would fit" in p.explanation
    assert plan(SD15, hw, strategy="cpu").vram_bytes == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        plan(SD15, _profile(8, (8, 6), 16), strategy="turbo")
    with pytest.raises(ValueError):
        plan(SD15, _profile(8, (8, 6), 16), budget=-1)
    with pytest.raises(ValueError):
        ModelSpec(0)
    with pytest.raises(ValueError):
        ModelSpec(GB, dtype_bytes=3)


def test_warnings():
    assert any("FP8" in w for w in plan(FLUX16, _profile(16, (8, 9), 32)).warnings)
    assert any("slow" in w for w in plan(SD15, _profile(0, None, 16)).warnings)
    # Streaming 18.27 GiB through a Docker-sized 64 MiB /dev/shm: Hearth cannot share them.
    hw = Hardware.profile(8 * GiB, 32 * GiB, (8, 6), shm=64 << 20)
    assert any("/dev/shm" in w for w in plan(FLUX16, hw).warnings)
    assert not any("/dev/shm" in w for w in plan(FLUX16, _profile(8, (8, 6), 32)).warnings)


def test_plan_to_dict():
    d = plan(FLUX16, _profile(24, (8, 6), 64)).to_dict()
    assert d["strategy"] == "partial" and set(d) >= {"vram_bytes", "ram_bytes", "resident_bytes",
                                                       "warnings", "explanation"}
    json.dumps(d)


# --- model_spec_from_file: header only ---

def _write(path, header: dict, data_size: int) -> str:
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + data_size)  # sparse: the data is never read
    return str(path)


def test_spec_from_file_reads_only_the_header(tmp_path):
    # A FLUX-sized file, sparse: 23.8e9 bytes of F16 that would take seconds to read.
    n = int(23.8 * GB)
    path = _write(tmp_path / "flux.safetensors",
                  {"__metadata__": {"format": "pt"},
                   "double_blocks.0.w": {"dtype": "F16", "shape": [n // 2 - 8], "data_offsets": [0, n - 16]},
                   "norm.scale": {"dtype": "F32", "shape": [4], "data_offsets": [n - 16, n]}}, n)
    spec = model_spec_from_file(path)
    assert (spec.weights_bytes, spec.dtype_bytes, spec.name) == (n, 2, "flux.safetensors")
    assert spec.largest_bytes == n - 16  # the largest tensor sizes the streamed layers
    assert plan(spec, _profile(16, (8, 9), 32)).strategy == "fp8"


def test_spec_from_file_fp8_and_checkpoint(tmp_path):
    path = _write(tmp_path / "fp8.safetensors",
                  {"a": {"dtype": "F8_E4M3", "shape": [1000], "data_offsets": [0, 1000]},
                   "b": {"dtype": "BF16", "shape": [10], "data_offsets": [1000, 1020]}}, 1020)
    assert model_spec_from_file(path).dtype_bytes == 1
    # A checkpoint is sized by its diffusion model: the fp32 text encoder runs at another time.
    path = _write(tmp_path / "ckpt.safetensors",
                  {"model.diffusion_model.x": {"dtype": "F16", "shape": [100], "data_offsets": [0, 200]},
                   "cond_stage_model.y": {"dtype": "F32", "shape": [300], "data_offsets": [200, 1400]}}, 1400)
    spec = model_spec_from_file(path)
    assert (spec.weights_bytes, spec.dtype_bytes) == (200, 2)


def test_spec_from_file_made_by_safetensors(tmp_path):
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file
    path = str(tmp_path / "real.safetensors")
    save_file({"w": np.zeros((64, 32), np.float16), "b": np.zeros(32, np.float32)}, path)
    spec = model_spec_from_file(path)
    assert (spec.weights_bytes, spec.dtype_bytes) == (64 * 32 * 2 + 32 * 4, 2)


@pytest.mark.parametrize("raw", [
    b"",  # no length
    (10**12).to_bytes(8, "little") + b"{}",  # length past the end
    (4).to_bytes(8, "little") + b"\xff\xfe{}",  # not UTF-8
    (2).to_bytes(8, "little") + b"[]",  # not an object
    len(b'{"t": {"dtype": 1}}').to_bytes(8, "little") + b'{"t": {"dtype": 1}}',  # no data_offsets
    len(b'{"t": {"dtype": "F16", "data_offsets": [0, 99]}}').to_bytes(8, "little")
    + b'{"t": {"dtype": "F16", "data_offsets": [0, 99]}}',  # data past the end of the file
])
def test_spec_from_file_refuses_bad_headers(tmp_path, raw):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(BadHeader):
        model_spec_from_file(path)


def test_spec_from_file_refuses_integer_weights(tmp_path):
    path = _write(tmp_path / "q.safetensors", {"q": {"dtype": "I8", "shape": [8], "data_offsets": [0, 8]}}, 8)
    with pytest.raises(ValueError, match="float"):
        model_spec_from_file(path)


# --- the CLI handlers, through argparse ---

def _run(capsys, *argv):
    parser = argparse.ArgumentParser(prog="hearth")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_plan_json(capsys):
    # 23.8 GiB of fp16 weights (CLI sizes are GiB) on 24 GiB cc 8.9: fp8 = 11.9 + 1.28 = 13.18 <= 23.
    rc, out, err = _run(capsys, "plan", "23.8", "--vram", "24", "--ram", "64", "--cc", "8.9", "--json")
    assert rc == 0 and err == ""
    doc = json.loads(out)
    assert doc["plan"]["strategy"] == "fp8"
    assert doc["hardware"]["accelerators"][0]["compute_capability"] == [8, 9]
    assert doc["model"]["weights_bytes"] == int(23.8 * GiB)


def test_cli_plan_human(capsys):
    rc, out, _ = _run(capsys, "plan", "23.8", "--vram", "24", "--ram", "64", "--cc", "8.6")
    assert rc == 0
    assert "partial" in out and "Why" in out and "Not fp8" in out


def test_cli_plan_options(capsys):
    # --dtype fp8 describes an FP8 file: fp8 strategy refused, full_gpu (11.9 + 1.28 = 13.18 <= 15) chosen.
    rc, out, _ = _run(capsys, "plan", "11.9", "--dtype", "fp8", "--vram", "16", "--ram", "32", "--json")
    assert rc == 0 and json.loads(out)["plan"]["strategy"] == "full_gpu"
    rc, _, err = _run(capsys, "plan", "11.9", "--dtype", "fp8", "--vram", "16", "--ram", "32",
                      "--strategy", "fp8")
    assert rc == 1 and "already FP8" in err
    rc, out, _ = _run(capsys, "plan", "23.8", "--vram", "24", "--ram", "64", "--cc", "8.9", "--budget", "8",
                      "--reserve", "0.5", "--json")
    assert rc == 0 and json.loads(out)["plan"]["vram_bytes"] <= 8 * GiB


# A refused plan, worked out by hand: 23.8 GiB of fp16 weights (W = 23.8; the CLI's sizes are GiB) on an
# 8 GiB card of unknown compute capability with 16 GiB of RAM. V = 7, A = S = 1.28, 2L = 0.04 W = 0.952.
#   full_gpu    W + A = 25.08 > 7                      fp8    compute capability unknown
#   partial     R = 7 - 1.28 - 0.952 = 4.768; streams 19.03 > 16     sequential  W = 23.8 > 16 of RAM
#   cpu         2 W + A = 48.88 > 16
# What would fit, at the printed precision (sizes rounded down, needs up):
#   largest here  full_gpu W + 1.28 <= 7: 5.72 -> 5.7;  partial W - (5.72 - 0.04 W) <= 16: W <= 20.88 -> 20.8;
#                 sequential W <= 16 -> 16.0;  cpu 2 W + 1.28 <= 16: 7.36 -> 7.3
#   RAM needed    partial streams 19.03 -> 19.1      VRAM needed  V >= 7.8 + 0.952 + 1.28 = 10.03: 11.03 -> 11.1 free
REFUSED_ARGS = ("plan", "23.8", "--vram", "8", "--ram", "16")


def test_cli_plan_refused_lays_out_why_and_what_would_fit(capsys):
    rc, out, err = _run(capsys, *REFUSED_ARGS)
    assert rc == 1
    assert err == "hearth plan: plan_impossible: nothing fits 23.8 GiB of fp16 weights here\n"  # one short line
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100, out  # readable: wrapped, not one 600-character line
    assert lines[0] == "Model     23.8 GiB of fp16 weights (2 bytes per weight)"
    assert "RAM 16.0 GiB available" in lines[1]
    assert "VRAM      7.0 GiB usable = 8.0 GiB free - 1.0 GiB reserve" in lines
    row = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert "needs 25.1 GiB of VRAM" in row["full_gpu"]
    assert "compute capability" in row["fp8"]
    assert "streams 19.0 GiB of weights from RAM, only 16.0 GiB available" in row["partial"]
    assert "needs all 23.8 GiB of weights in RAM" in row["sequential"]
    assert "needs 48.9 GiB of RAM" in row["cpu"] and "fp32" in row["cpu"]
    assert lines.index("Would fit") > lines.index("Plan      none: no strategy fits")
    text = " ".join(out.split())  # the wrapped lines joined
    assert ("here models up to 20.8 GiB of fp16 weights, as partial (the largest per strategy: full_gpu 5.7 GiB, "
            "sequential 16.0 GiB, cpu 7.3 GiB)") in text
    assert "more RAM this model on this GPU with 19.1 GiB of RAM available, as partial" in text
    assert "more VRAM this model with this RAM on a GPU with 11.1 GiB of VRAM free, as partial" in text


def test_cli_plan_what_would_fit_does_fit(capsys):
    """Each figure of the refusal, handed back to the planner, plans; a tenth of a GiB less (or more) does not."""
    assert _run(capsys, "plan", "20.8", "--vram", "8", "--ram", "16", "--json")[0] == 0
    assert _run(capsys, "plan", "20.9", "--vram", "8", "--ram", "16")[0] == 1
    rc, out, _ = _run(capsys, "plan", "23.8", "--vram", "8", "--ram", "19.1", "--json")
    assert rc == 0 and json.loads(out)["plan"]["strategy"] == "partial"
    assert _run(capsys, "plan", "23.8", "--vram", "8", "--ram", "19.0")[0] == 1
    rc, out, _ = _run(capsys, "plan", "23.8", "--vram", "11.1", "--ram", "16", "--json")
    assert rc == 0 and json.loads(out)["plan"]["strategy"] == "partial"
    assert _run(capsys, "plan", "23.8", "--vram", "11.0", "--ram", "16")[0] == 1


def test_cli_plan_refused_json_keeps_the_code_and_gives_the_figures(capsys):
    rc, out, err = _run(capsys, *REFUSED_ARGS, "--json")
    assert rc == 1 and err.count("\n") == 1 and "plan_impossible" in err
    error = json.loads(out)["error"]
    assert error["code"] == "plan_impossible" and "Nothing fits" in error["message"]
    details = error["details"]
    assert [o["strategy"] for o in details["options"]] == ["full_gpu", "fp8", "partial", "sequential", "cpu"]
    assert all(o["problem"] for o in details["options"]) and details["asked"] == "auto"
    fits = details["would_fit"]
    assert fits["best"]["strategy"] == "partial" and fits["best"]["bytes"] / GiB == pytest.approx(20.8)
    assert fits["ram"]["bytes"] / GiB == pytest.approx(19.1) and fits["vram"]["bytes"] / GiB == pytest.approx(11.1)
    assert "fp8" not in fits["largest"]  # no FP8 on a GPU of unknown compute capability, at any size


def test_cli_plan_refused_by_the_budget(capsys):
    # 24 GiB cc 8.9, 16 GiB RAM, a 2 GiB budget: V = 2. sequential needs 0.952 + 1.28 = 2.23 > 2, partial
    # 0.1 W + 2L + A = 4.61 > 2, cpu 48.88 > 16. Without the budget (V = 23) fp8 fits: 11.9 + 1.28 = 13.18.
    # A budget that fits, with this RAM: partial's V >= 10.03 -> 10.1 (11.1 GiB free with the 1 GiB reserve).
    # Largest here: sequential W <= 16 (0.04 W + 1.28 <= 2 up to W = 18) -> 16.0; full_gpu W <= 0.72 GiB
    # = 737.28 MiB -> 737.2 MiB; fp8 W / 2 + 1.28 <= 2 -> 1.4; partial 0.14 W + 1.28 <= 2 -> 5.1.
    # RAM: nothing on this budget streams, so only the CPU: 48.9.
    rc, out, _ = _run(capsys, "plan", "23.8", "--vram", "24", "--ram", "16", "--cc", "8.9", "--budget", "2")
    assert rc == 1
    text = " ".join(out.split())
    assert "capped by the 2.0 GiB budget" in text
    assert ("models up to 16.0 GiB of fp16 weights, as sequential (the largest per strategy: full_gpu 737.2 MiB, "
            "fp8 1.4 GiB, partial 5.1 GiB, cpu 7.3 GiB)") in text
    assert "more RAM this model on the CPU with 48.9 GiB of RAM available, as cpu" in text
    assert "a VRAM budget of at least 10.1 GiB (a GPU with 11.1 GiB of VRAM free), as partial" in text
    assert "no budget without the VRAM budget this model runs here as fp8" in text


def test_cli_plan_forced_strategy_refused(capsys):
    # 2 GiB fp16 on 8 GiB cc 8.6: fp8 needs 8.9; the others fit: full_gpu 2 + 1.28 = 3.28, partial keeps all
    # 2 resident (2 + 0.08 + 1.28 = 3.36), sequential 0.08 + 1.28 = 1.36 and 2 GiB of RAM, cpu 4 + 1.28 = 5.28.
    rc, out, err = _run(capsys, "plan", "2", "--vram", "8", "--ram", "16", "--cc", "8.6", "--strategy", "fp8")
    assert rc == 1
    assert err == ("hearth plan: plan_impossible: fp8 cannot run 2.0 GiB of fp16 weights here: FP8 needs compute "
                   "capability 8.9+, this GPU has 8.6\n")
    row = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "fp8 was asked for and cannot run" in out
    assert row["full_gpu"].endswith("fits (VRAM 3.3 GiB, RAM 0 B)")
    assert row["partial"].endswith("fits (VRAM 3.4 GiB, RAM 0 B)")
    assert row["sequential"].endswith("fits (VRAM 1.4 GiB, RAM 2.0 GiB)")
    assert row["cpu"].endswith("fits (VRAM 0 B, RAM 5.3 GiB)")
    assert "this GPU has 8.6" in row["fp8"]
    assert "no model of fp16 weights with fp8" in row["here"]  # no size makes FP8 run on 8.6
    assert row["instead"].endswith("full_gpu, partial, sequential, cpu (without --strategy: full_gpu)")
    # A forced strategy that RAM holds back: sequential needs all 23.8 GiB in RAM; no VRAM changes that.
    rc, out, _ = _run(capsys, *REFUSED_ARGS, "--strategy", "sequential")
    text = " ".join(out.split())
    assert rc == 1 and "models up to 16.0 GiB of fp16 weights, as sequential" in text
    assert "with 23.8 GiB of RAM available, as sequential" in text and "more VRAM" not in text


def test_cli_plan_refused_without_a_gpu(capsys):
    # No GPU, 16 GiB: only the CPU, 2 W + 1.28 <= 16 -> 7.3; a CUDA GPU would take it with this RAM at 11.1 free.
    rc, out, _ = _run(capsys, "plan", "23.8", "--vram", "0", "--ram", "16")
    text = " ".join(out.split())
    assert rc == 1 and "VRAM " not in out.splitlines()[2]  # no usable-VRAM line without a GPU
    assert "here models up to 7.3 GiB of fp16 weights, as cpu" in text and "largest per strategy" not in text
    assert "more RAM this model on the CPU with 48.9 GiB of RAM available, as cpu" in text
    assert "more VRAM this model with this RAM on a CUDA GPU with 11.1 GiB of VRAM free, as partial" in text


def test_cli_plan_words_the_weights_as_stored_and_as_computed(tmp_path, capsys):
    """The file's type and width on the Model line; a line of its own where a plan computes at another width."""
    # 3,000,000 fp16 weights: 6,000,000 bytes = 5.7 MiB; upcast to fp32 on the CPU: 11.4 MiB.
    path = _write(tmp_path / "small.safetensors",
                  {"w": {"dtype": "F16", "shape": [3 * 10**6], "data_offsets": [0, 6 * 10**6]}}, 6 * 10**6)
    rc, out, _ = _run(capsys, "plan", path, "--vram", "0", "--ram", "16")
    assert rc == 0 and "0.0 GiB" not in out and "32-bit" not in out and "bit weights" not in out
    lines = out.splitlines()
    assert lines[0] == "Model     small.safetensors, 5.7 MiB of fp16 weights (2 bytes per weight)"
    assert lines[2] == "Plan      cpu"
    weights = " ".join(" ".join(lines[3:5]).split())
    assert weights.startswith("Weights computed in fp32 on the CPU: ComfyUI upcasts a diffusion model's fp16 "
                              "weights to fp32 there, so they take 11.4 MiB of RAM")
    assert "the model runs on the CPU with its weights in fp32, 11.4 MiB in RAM" in " ".join(out.split())
    # On a GPU the fp16 file stays fp16: nothing to explain.
    rc, out, _ = _run(capsys, "plan", path, "--vram", "8", "--ram", "16")
    assert rc == 0 and "Plan      full_gpu" in out and "Weights" not in out
    # bf16 by name; a text encoder stays 16-bit on the CPU.
    path = _write(tmp_path / "bf.safetensors",
                  {"w": {"dtype": "BF16", "shape": [512], "data_offsets": [0, 1024]}}, 1024)
    assert "bf.safetensors, 1.0 KiB of bf16 weights (2 bytes per weight)" in _run(capsys, "plan", path)[1]
    rc, out, _ = _run(capsys, "plan", "1", "--kind", "text_encoder", "--vram", "0", "--ram", "16")
    assert rc == 0 and "Plan      cpu" in out and "Weights" not in out
    # An fp32 file on a GPU: cast to 16 bits, half the bytes (0.5 GiB of fp32 -> 256 MiB).
    rc, out, _ = _run(capsys, "plan", "0.5", "--dtype", "fp32", "--vram", "8", "--ram", "16")
    assert rc == 0 and out.splitlines()[0] == "Model     512.0 MiB of fp32 weights (4 bytes per weight)"
    assert "Weights   cast from fp32 to 16 bits (fp16 or bf16) on the GPU, as ComfyUI does: 256.0 MiB" in out


def test_cli_plan_file(tmp_path, capsys):
    path = _write(tmp_path / "sd15.safetensors",
                  {"w": {"dtype": "F16", "shape": [10**9], "data_offsets": [0, 2 * 10**9]}}, 2 * 10**9)
    rc, out, _ = _run(capsys, "plan", path, "--vram", "6", "--ram", "16", "--json")
    assert rc == 0 and json.loads(out)["plan"]["strategy"] == "full_gpu"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    rc, _, err = _run(capsys, "plan", str(bad), "--vram", "6", "--ram", "16")
    assert rc == 1 and "bad.safetensors" in err


def test_cli_plan_bad_usage(capsys):
    assert _run(capsys, "plan", "not-a-model", "--vram", "8", "--ram", "16")[0] == 2
    assert _run(capsys, "plan", "-3", "--vram", "8", "--ram", "16")[0] == 2
    assert _run(capsys, "plan", "2", "--cc", "8.9")[0] == 2  # --cc without --vram
    with pytest.raises(SystemExit) as exc:
        _run(capsys, "plan", "2", "--vram", "8", "--cc", "eight")
    assert exc.value.code == 2


def test_cli_plan_on_this_machine(capsys):
    # No --vram/--ram: this machine's detected values. Without a GPU, SD1.5 (2 GiB) runs on the CPU if
    # RAM allows; either way the handler answers 0 or 1, never crashes.
    rc, out, err = _run(capsys, "plan", "2", "--json")
    assert rc in (0, 1)
    if rc == 0:
        assert json.loads(out)["hardware"]["cpu_cores"] == os.cpu_count()


def test_cli_detect(capsys):
    rc, out, _ = _run(capsys, "detect", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["cpu_cores"] == os.cpu_count() and doc["ram_total"] > 0
    rc, out, _ = _run(capsys, "detect")
    assert rc == 0 and "RAM" in out and "/dev/shm" in out and "CPU" in out


def test_cli_plan_work(capsys):
    # FLUX-sized fp16 weights (22.165 GiB = 23.8e9 B given in GiB here: 22.165) on a 4 GiB card, as in
    # WORK_TABLE but with 2L = 4 % of W (a SIZE has no largest tensor): 0.887 + 1.984 = 2.871 <= 3.
    rc, out, _ = _run(capsys, "plan", "22.165", "--family", "flux", "--width", "1024", "--height", "1024",
                      "--vram", "4", "--ram", "64", "--cc", "8.6", "--json")
    assert rc == 0 and json.loads(out)["plan"]["strategy"] == "sequential"
    assert json.loads(out)["plan"]["vram_bytes"] / GiB == pytest.approx(2.871, abs=0.01)
    # Batch 4: 0.887 + 7.936 > 3 -> cpu (44.33 + 7.94 <= 64).
    rc, out, _ = _run(capsys, "plan", "22.165", "--family", "flux", "--width", "1024", "--height", "1024",
                      "--batch", "4", "--vram", "4", "--ram", "64", "--cc", "8.6", "--json")
    assert rc == 0 and json.loads(out)["plan"]["strategy"] == "cpu"
    assert _run(capsys, "plan", "2", "--width", "512", "--vram", "8", "--ram", "16")[0] == 2  # no --height
    assert _run(capsys, "plan", "2", "--width", "512", "--height", "0", "--vram", "8", "--ram", "16")[0] == 2
