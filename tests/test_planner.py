"""The VRAM planner over a table of hardware profiles and models, its refusals and its CLI.

Expected plans are worked out by hand below from the planner's documented estimates; nothing here
calls the planner's own arithmetic.
"""

import argparse
import json
import os

import pytest

from comfyui_hearth.core.errors import BadHeader, HearthError
from comfyui_hearth.planner import Hardware, ModelSpec, PlanImpossible, model_spec_from_file, plan
from comfyui_hearth.cli import plan as cli

GiB = 2**30
GB = 10**9

# First principles. The planner's documented estimates, restated:
#   V   usable VRAM = card - 1 GiB reserve (ComfyUI's 0.4-0.7 GiB EXTRA_RESERVED_VRAM + CUDA context).
#   W   weights on the GPU: 16-bit, or 8-bit for an FP8 file.
#   A   workspace = max(0.8 GiB, 10 % of the model at 16 bits)   (0.8 GiB: ComfyUI's minimum_inference_memory)
#   2L  two streamed layers = 2 x 2 % of W.
# Rules:
#   full_gpu    W + A <= V
#   fp8         W/2 + A <= V; CUDA with compute capability >= 8.9; a 16-bit model (an FP8 file gains nothing)
#   partial     CUDA; resident R = V - A - 2L >= 10 % of W; RAM >= W - R (the streamed part)
#   sequential  CUDA; 2L + A <= V; RAM >= W
#   cpu         RAM >= 4 bytes x params (ComfyUI upcasts the diffusion model to fp32 on CPU) + A
#   MPS shares RAM with the GPU: no FP8, nothing to stream from (no partial, no sequential).
#
# Models, sized as published (decimal GB) and converted to GiB (/ 1.0737):
#   SD1.5 fp16 2.0 GB   W 1.863  A 0.8 (floor; 10 % = 0.19)  2L 0.075
#                       full 2.663   fp8 0.931+0.8 = 1.731   partial needs V >= 0.8+0.075+0.186 = 1.061
#                       sequential 0.875   cpu 4 x 1e9 B = 3.725 + 0.8 = 4.525
#   SDXL UNet fp16 5.1 GB   W 4.750  A 0.8 (10 % = 0.475)  2L 0.190
#                       full 5.550   fp8 2.375+0.8 = 3.175   partial V >= 1.465   seq 0.990   cpu 10.30
#   SDXL checkpoint 6.9 GB planned whole (ModelSpec of the file size)   W 6.426  A 0.8  2L 0.257
#                       full 7.226   fp8 4.013   partial V >= 1.700   cpu 13.65
#   FLUX dev fp16 23.8 GB   W 22.165  A 2.217  2L 0.887
#                       full 24.382   fp8 11.083+2.217 = 13.299   partial V >= 2.217+0.887+2.217 = 5.320
#                       sequential 3.103   cpu 4 x 11.9e9 B = 44.33 + 2.217 = 46.55
#   FLUX dev fp8 11.9 GB (1 byte per weight, same 11.9e9 params)   W 11.083  A 2.217 (16-bit size 22.17)
#                       2L 0.443  full 13.299   fp8: n/a   partial V >= 2.217+0.443+1.108 = 3.768
#                       sequential 2.660   cpu 46.55
#   Wan 14B video fp16 28 GB   W 26.077  A 2.608  2L 1.043
#                       full 28.685   fp8 13.039+2.608 = 15.646   partial V >= 6.258   seq 3.651
#                       cpu 4 x 14e9 B = 52.15 + 2.608 = 54.76
SD15 = ModelSpec(int(2.0 * GB), 2, name="SD1.5")
SDXL = ModelSpec(int(5.1 * GB), 2, name="SDXL UNet")
SDXL_CKPT = ModelSpec(int(6.9 * GB), 2, name="SDXL checkpoint")
FLUX16 = ModelSpec(int(23.8 * GB), 2, name="FLUX dev fp16")
FLUX8 = ModelSpec(int(11.9 * GB), 1, name="FLUX dev fp8")
WAN14 = ModelSpec(int(28.0 * GB), 2, name="Wan 14B")

REFUSED = "refused"

# (vram GiB (0: no GPU), compute capability, RAM GiB, model, expected, (VRAM, RAM, resident) GiB or None)
TABLE = [
    # No GPU, 16 GiB RAM, SD1.5: cpu needs 4.53 <= 16.
    (0, None, 16, SD15, "cpu", (0, 4.525, 0)),
    # No GPU, 16 GiB, SDXL UNet: cpu 10.30 <= 16.
    (0, None, 16, SDXL, "cpu", None),
    # No GPU, 8 GiB, SDXL UNet: cpu 10.30 > 8, nothing else without a GPU.
    (0, None, 8, SDXL, REFUSED, None),
    # No GPU, 32 GiB, FLUX fp16: fp32 on CPU 46.55 > 32.
    (0, None, 32, FLUX16, REFUSED, None),
    # No GPU, 64 GiB, FLUX fp8: CPU has no FP8, upcast to fp32: 46.55 <= 64.
    (0, None, 64, FLUX8, "cpu", None),
    # 1 GiB GPU: V = 0, nothing on the GPU; SD1.5 on CPU 4.53 <= 16.
    (1, (6, 1), 16, SD15, "cpu", None),
    # 2 GiB, cc 6.1, SD1.5: V 1; full 2.66 > 1; no FP8; partial needs 1.061 > 1; sequential 0.875 <= 1,
    # RAM 1.86 <= 16.
    (2, (6, 1), 16, SD15, "sequential", (0.875, 1.863, 0)),
    # 4 GiB, cc 7.5, SDXL UNet: V 3; full 5.55 > 3; no FP8; R = 3 - 0.8 - 0.19 = 2.01 >= 0.475, RAM 2.74.
    (4, (7, 5), 16, SDXL, "partial", (3.0, 2.740, 2.010)),
    # 6 GiB, cc 8.6, SD1.5: full 2.66 <= 5.
    (6, (8, 6), 16, SD15, "full_gpu", (2.663, 0, 1.863)),
    # 6 GiB, cc 8.6, SDXL UNet: full 5.55 > 5; no FP8 on 8.6; R = 5 - 0.99 = 4.01 >= 0.475, RAM 0.74.
    (6, (8, 6), 16, SDXL, "partial", None),
    # 6 GiB, cc 8.9, SDXL UNet: full 5.55 > 5; fp8 3.175 <= 5.
    (6, (8, 9), 16, SDXL, "fp8", (3.175, 0, 2.375)),
    # 6 GiB, cc 8.6, 32 GiB, FLUX fp16: full and fp8 no; partial needs 5.32 > 5; sequential 3.10 <= 5,
    # RAM 22.17 <= 32.
    (6, (8, 6), 32, FLUX16, "sequential", (3.103, 22.165, 0)),
    # 6 GiB, cc 8.6, 32 GiB, Wan 14B: partial needs 6.26 > 5; sequential 3.65 <= 5, RAM 26.08 <= 32.
    (6, (8, 6), 32, WAN14, "sequential", None),
    # 8 GiB, cc 8.6, 16 GiB, SDXL checkpoint: full 7.23 > 7; R = 7 - 0.8 - 0.257 = 5.94, RAM 0.48.
    (8, (8, 6), 16, SDXL_CKPT, "partial", None),
    # 8 GiB, cc 8.6, 16 GiB RAM, FLUX fp16: partial R = 7 - 3.10 = 3.90 but streams 22.17 - 3.90 = 18.27 > 16;
    # sequential needs 22.17 > 16 of RAM; cpu 46.55 > 16. Small RAM makes FLUX impossible.
    (8, (8, 6), 16, FLUX16, REFUSED, None),
    # Same with 32 GiB RAM: 18.27 <= 32 -> partial.
    (8, (8, 6), 32, FLUX16, "partial", (7.0, 18.269, 3.897)),
    # 8 GiB, cc 8.9: fp8 needs 13.30 > 7 -> still partial.
    (8, (8, 9), 32, FLUX16, "partial", None),
    # 8 GiB, cc 8.6, FLUX fp8: full 13.30 > 7; fp8 gains nothing; R = 7 - 2.217 - 0.443 = 4.34 >= 1.108,
    # RAM 6.74.
    (8, (8, 6), 32, FLUX8, "partial", (7.0, 6.743, 4.340)),
    # 12 GiB, cc 8.6, 16 GiB, FLUX fp8: full 13.30 > 11; R = 11 - 2.66 = 8.34, RAM 2.74.
    (12, (8, 6), 16, FLUX8, "partial", None),
    # 12 GiB, cc 8.9, 16 GiB, FLUX fp16: fp8 13.30 > 11; R = 11 - 3.10 = 7.90, RAM 14.27 <= 16.
    (12, (8, 9), 16, FLUX16, "partial", (11.0, 14.269, 7.897)),
    # 12 GiB, cc 8.9, SDXL checkpoint: full 7.23 <= 11.
    (12, (8, 9), 16, SDXL_CKPT, "full_gpu", None),
    # 16 GiB, cc 8.9, FLUX fp16: full 24.38 > 15; fp8 13.30 <= 15.
    (16, (8, 9), 32, FLUX16, "fp8", (13.299, 0, 11.083)),
    # 16 GiB, cc 8.6, FLUX fp16: no FP8; R = 15 - 3.10 = 11.90, RAM 10.27.
    (16, (8, 6), 32, FLUX16, "partial", None),
    # 16 GiB, cc 8.9, FLUX fp8: full 13.30 <= 15.
    (16, (8, 9), 32, FLUX8, "full_gpu", None),
    # 16 GiB, cc 8.6, FLUX fp8: full 13.30 <= 15 -- FP8 *storage* runs anywhere (upcast per op).
    (16, (8, 6), 32, FLUX8, "full_gpu", None),
    # 16 GiB, cc 7.5 (T4), Wan 14B: full 28.68 > 15; no FP8; R = 15 - 3.65 = 11.35 >= 2.61, RAM 14.73.
    (16, (7, 5), 32, WAN14, "partial", None),
    # 24 GiB, cc 8.6 (3090), FLUX fp16: full 24.38 > 23; no FP8; R = 23 - 3.10 = 19.90, RAM 2.27.
    (24, (8, 6), 64, FLUX16, "partial", (23.0, 2.269, 19.897)),
    # 24 GiB, cc 8.9 (4090), FLUX fp16: fp8 13.30 <= 23.
    (24, (8, 9), 64, FLUX16, "fp8", None),
    # 24 GiB, cc 8.9, Wan 14B: full 28.68 > 23; fp8 15.65 <= 23.
    (24, (8, 9), 64, WAN14, "fp8", None),
    # 24 GiB, cc 8.6, 16 GiB RAM, Wan 14B: R = 23 - 3.65 = 19.35, RAM 26.08 - 19.35 = 6.73 <= 16.
    (24, (8, 6), 16, WAN14, "partial", (23.0, 6.728, 19.349)),
    # 48 GiB, cc 8.6 (A6000), Wan 14B: full 28.68 <= 47.
    (48, (8, 6), 64, WAN14, "full_gpu", (28.685, 0, 26.077)),
    # 80 GiB, cc 9.0 (H100), Wan 14B: full 28.68 <= 79.
    (80, (9, 0), 128, WAN14, "full_gpu", None),
    # 80 GiB, cc 8.0 (A100), 16 GiB RAM, FLUX fp16: full 24.38 <= 79; a full load needs no RAM to run.
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
    # Apple MPS, unified memory. 32 GiB: V 31 >= FLUX fp16 full 24.38.
    (32, FLUX16, "full_gpu"),
    # 16 GiB: V 15 >= FLUX fp8 full 13.30.
    (16, FLUX8, "full_gpu"),
    # 16 GiB, FLUX fp16: full 24.38 > 15, no FP8 and nothing to stream on MPS, cpu 46.55 > 16.
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
    # T5-XXL fp16, 9.5 GB = 8.848 GiB, A = max(0.8, 0.885) = 0.885. On CPU a text encoder keeps its
    # 16 bits: 8.848 + 0.885 = 9.73 <= 16. A diffusion model of that size is upcast: 17.70 + 0.885 > 16.
    hw = _profile(0, None, 16)
    p = plan(ModelSpec(int(9.5 * GB), 2, kind="text_encoder"), hw)
    assert p.strategy == "cpu" and p.ram_bytes / GiB == pytest.approx(9.733, abs=0.01)
    with pytest.raises(PlanImpossible):
        plan(ModelSpec(int(9.5 * GB), 2), hw)


def test_explanation_names_the_next_better_strategy_and_why():
    # 24 GiB cc 8.6, FLUX fp16 -> partial. Next better: fp8 (no: cc 8.6), then full_gpu (24.4 > 23.0).
    text = plan(FLUX16, _profile(24, (8, 6), 64)).explanation
    assert "partial" in text and "8.9" in text and "8.6" in text and "24.4 GiB" in text and "23.0 GiB" in text
    assert text.index("Not fp8") < text.index("Not full_gpu")
    # 16 GiB cc 8.9 -> fp8; next better is full_gpu, 24.4 GiB > 15.0 usable.
    text = plan(FLUX16, _profile(16, (8, 9), 32)).explanation
    assert "Not full_gpu" in text and "24.4 GiB" in text and "15.0 GiB" in text
    # The best plan has nothing better to explain away.
    assert "Not " not in plan(SD15, _profile(24, (8, 9), 64)).explanation


def test_budget_caps_vram():
    # 24 GiB cc 8.9 but an 8 GiB budget: V = min(23, 8) = 8; fp8 13.30 > 8; R = 8 - 3.10 = 4.90.
    p = plan(FLUX16, _profile(24, (8, 9), 64), budget=8 * GiB)
    assert p.strategy == "partial"
    assert p.resident_bytes / GiB == pytest.approx(4.897, abs=0.01)
    assert "budget" in p.explanation


def test_impossible_budget_is_refused_with_what_fits():
    # A 2 GiB budget on a 24 GiB cc 8.9 card: sequential needs 3.10 > 2, cpu 46.55 > 16. Without the
    # budget fp8 fits (13.30 <= 23); a GPU with 3.10 + 1 reserve = 4.1 GiB free would do sequential.
    with pytest.raises(PlanImpossible) as err:
        plan(FLUX16, _profile(24, (8, 9), 16), budget=2 * GiB)
    message = err.value.message
    assert "Without the VRAM budget it would run as fp8" in message
    assert "4.1 GiB free" in message and "46.5 GiB of RAM" in message
    assert err.value.code == "plan_impossible" and isinstance(err.value, HearthError)
    assert err.value.to_dict()["error"]["code"] == "plan_impossible"


def test_reserve():
    # 8 GiB, SDXL checkpoint: full 7.23 > 7 with the 1 GiB default reserve, <= 8 with none.
    assert plan(SDXL_CKPT, _profile(8, (8, 6), 16)).strategy == "partial"
    assert plan(SDXL_CKPT, _profile(8, (8, 6), 16), reserve=0).strategy == "full_gpu"
    # A reserve larger than the card leaves nothing: SD1.5 goes to the CPU.
    assert plan(SD15, _profile(8, (8, 6), 16), reserve=9 * GiB).strategy == "cpu"


def test_forced_strategies():
    hw = _profile(24, (8, 6), 64)
    with pytest.raises(PlanImpossible, match="8.9") as err:
        plan(FLUX16, hw, strategy="fp8")
    assert err.value.alternatives == ("partial", "sequential", "cpu")  # cpu: 46.55 <= 64
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
    # 23.8 GiB of fp16 weights (CLI sizes are GiB) on 24 GiB cc 8.9: fp8 = 11.9 + 2.38 = 14.3 <= 23.
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
    # --dtype fp8 describes an FP8 file: fp8 strategy refused, full_gpu (11.9 + 2.38 = 14.3 <= 15) chosen.
    rc, out, _ = _run(capsys, "plan", "11.9", "--dtype", "fp8", "--vram", "16", "--ram", "32", "--json")
    assert rc == 0 and json.loads(out)["plan"]["strategy"] == "full_gpu"
    rc, _, err = _run(capsys, "plan", "11.9", "--dtype", "fp8", "--vram", "16", "--ram", "32",
                      "--strategy", "fp8")
    assert rc == 1 and "already FP8" in err
    rc, out, _ = _run(capsys, "plan", "23.8", "--vram", "24", "--ram", "64", "--cc", "8.9", "--budget", "8",
                      "--reserve", "0.5", "--json")
    assert rc == 0 and json.loads(out)["plan"]["vram_bytes"] <= 8 * GiB


def test_cli_plan_refused(capsys):
    # 8 GiB with 16 GiB RAM cannot run FLUX fp16 at all (see the table).
    rc, out, err = _run(capsys, "plan", "23.8", "--vram", "8", "--ram", "16")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "plan_impossible" in err and "would fit" in err
    rc, out, err = _run(capsys, "plan", "23.8", "--vram", "8", "--ram", "16", "--json")
    assert rc == 1 and json.loads(out)["error"]["code"] == "plan_impossible"


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
