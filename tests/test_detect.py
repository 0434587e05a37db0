"""Hardware detection on this machine, with a faked CUDA stack, a broken one, and (when present) a real GPU."""

import json
import os
import sys
import types

import pytest

from comfyui_hearth.planner import Hardware, ModelSpec, detect, plan

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
def test_cpu_machine():
    hw = detect()
    assert not [a for a in hw.accelerators if a.kind == "cuda"]
    assert hw.ram_total > 0 and 0 < hw.ram_available <= hw.ram_total
    assert hw.cpu_cores == os.cpu_count()
    json.dumps(hw.to_dict())


def test_shm_matches_statvfs():
    st = os.statvfs("/dev/shm")
    hw = detect()
    assert hw.shm_total == st.f_blocks * st.f_frsize
    assert 0 <= hw.shm_free <= hw.shm_total  # free moves as other tests fill /dev/shm


def test_shm_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HEARTH_SHM_DIR", str(tmp_path))
    st = os.statvfs(tmp_path)
    assert detect().shm_total == st.f_blocks * st.f_frsize
    monkeypatch.setenv("HEARTH_SHM_DIR", str(tmp_path / "missing"))
    hw = detect()
    assert (hw.shm_total, hw.shm_free) == (0, 0)
    assert any("shared memory" in n for n in hw.notes)


def _fake_cuda(monkeypatch, cc, name="Fake RTX", total=24 << 30, free=22 << 30):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name=name, major=cc[0], minor=cc[1]))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free, total))
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("cc,fp8,bf16", [((8, 9), True, True), ((9, 0), True, True), ((8, 6), False, True),
                                         ((7, 5), False, False)])
def test_cuda_capabilities(monkeypatch, cc, fp8, bf16):
    _fake_cuda(monkeypatch, cc)
    (gpu,) = detect().accelerators
    assert (gpu.kind, gpu.name, gpu.vram_total, gpu.vram_free) == ("cuda", "Fake RTX", 24 << 30, 22 << 30)
    assert (gpu.compute_capability, gpu.fp8, gpu.bf16) == (cc, fp8, bf16)


def test_broken_driver_is_no_accelerator(monkeypatch):
    def broken():
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    _fake_cuda(monkeypatch, (8, 9))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: broken())
    hw = detect()
    assert hw.accelerators == () and any("insufficient" in n for n in hw.notes)
    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert detect().accelerators == ()


def test_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    hw = detect()
    assert hw.accelerators == () and any("torch" in n for n in hw.notes)
    assert hw.ram_total > 0


def test_profile():
    assert Hardware.profile(0, 16 << 30).accelerators == ()
    (gpu,) = Hardware.profile(12 << 30, 32 << 30, (8, 9)).accelerators
    assert (gpu.vram_free, gpu.fp8, gpu.bf16) == (12 << 30, True, True)
    (gpu,) = Hardware.profile(12 << 30, 32 << 30).accelerators  # capability unknown: assume no FP8
    assert (gpu.compute_capability, gpu.fp8) == (None, False)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
def test_real_gpu():
    hw = detect()
    gpu = hw.accelerators[0]
    free, total = torch.cuda.mem_get_info(0)
    assert gpu.kind == "cuda" and gpu.vram_total == total and 0 < gpu.vram_free <= total
    assert gpu.compute_capability == torch.cuda.get_device_capability(0)
    assert gpu.fp8 == (gpu.compute_capability >= (8, 9))
    assert plan(ModelSpec(2 * 10**9), hw).strategy in ("full_gpu", "fp8", "partial", "sequential")
