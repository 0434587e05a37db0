"""client/pinning.py on a machine without CUDA: a load through a real daemon is unaffected and the reason is
clear; the budget's accounting; RLIMIT_MEMLOCK in the status; the write detector behind hazard 2 (pages of a
real segment mapping written after mapping are found, page by page); mappings are forgotten when their
tensors go. The CUDA registration itself (is_pinned, bandwidth, Anonymous pages) is `python -m bench.gpu`'s."""

from __future__ import annotations

import gc
import mmap
import os
import resource
import subprocess
import textwrap

import pytest
import torch

from comfyui_hearth.client import load, pinning
from conftest import PY, assert_same_tensors, make_model, reference

GiB = 2**30
PAGE = mmap.PAGESIZE


def _cached(daemon, tmp_path, name="m.safetensors", **kw):
    path = make_model(daemon.models / name, **kw)
    got = load(path)
    assert got.cached, got.reason
    return path, got


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the no-CUDA path is not this machine's")
def test_without_cuda_the_load_is_unaffected_and_the_reason_is_clear(in_process, tmp_path):
    path, got = _cached(in_process, tmp_path)
    pins = pinning.register_views(got.tensors.values())
    assert len(pins) == 1 and not pins[0].registered  # one mapping behind all the views
    assert pins[0].reason == f"no CUDA: this torch ({torch.__version__}) is not a CUDA build"
    assert_same_tensors(got.tensors, reference(path))  # views untouched, still the file's bytes
    assert not any(t.is_pinned() for t in got.tensors.values())
    doc = pinning.status()
    assert doc["available"] is False and doc["reason"] == pins[0].reason and doc["registered"] == 0
    mine = [m for m in doc["mappings"] if m["name"] == path.name]
    assert mine == [{"name": path.name, "size": os.path.getsize(path), "registered": False,
                     "reason": pins[0].reason}]  # the file name only: the panel never shows paths
    again = load(path)  # and the next load maps as before
    assert again.cached and again.hit


def test_tensors_that_are_not_views_are_skipped(in_process, tmp_path):
    _, got = _cached(in_process, tmp_path)
    copies = [t.clone() for t in got.tensors.values()]
    assert pinning.register_views(copies) == [] and pinning.verify_views(copies) == []


def test_a_mapping_is_forgotten_when_its_tensors_go(in_process, tmp_path):
    path, got = _cached(in_process, tmp_path, "gone.safetensors")
    assert any(m["name"] == path.name for m in pinning.status()["mappings"])
    del got
    gc.collect()
    assert not any(m["name"] == path.name for m in pinning.status()["mappings"])


def test_hearth_pin_off_is_the_reason_first(in_process, tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_PIN", "off")
    _, got = _cached(in_process, tmp_path)
    assert [p.reason for p in pinning.register_views(got.tensors.values())] == ["HEARTH_PIN is off"]


def test_written_pages_finds_each_copy_on_write_page(in_process, tmp_path):
    # Hazard 2's detector: a page written through a MAP_PRIVATE view becomes this process's own; the
    # segment and other processes keep theirs. A read-only CUDA registration would go on reading the old
    # page, so verify_views unregisters a mapping where this count is not 0.
    big = torch.arange(64 * PAGE // 4, dtype=torch.float32)  # 64 pages of data
    path, got = _cached(in_process, tmp_path, "w.safetensors", tensors={"big": big, "small": torch.ones(3)})
    pin = pinning.mapping_of(got.tensors["big"])
    assert pin is pinning.mapping_of(got.tensors["small"]) and pinning.mapping_of(torch.ones(3)) is None
    view = got.tensors["big"]
    assert sum(view[:: PAGE // 4].tolist()) > 0  # every page read: still shared, none written
    assert pinning.written_pages(pin.base, pin.size) == 0
    writes = [(0, 1), (10 * PAGE // 4, 8), (20 * PAGE // 4 - 1, 1)]  # (first float, floats) written
    for at, n in writes:
        view[at : at + n] = -1
    # The data does not start on a page boundary: count the mapping's pages each write touched.
    touched = {(view.data_ptr() + 4 * i - pin.base) // PAGE for at, n in writes for i in (at, at + n - 1)}
    assert pinning.written_pages(pin.base, pin.size) == len(touched) >= 3
    assert torch.equal(reference(path)["big"], big)  # the file, the segment: untouched
    assert pinning.verify_views(got.tensors.values()) == []  # nothing registered here, nothing to undo


def test_budget_accounting():
    b = pinning.PinBudget(10 * GiB)
    assert b.take(6 * GiB) is None and b.used == 6 * GiB
    refused = b.take(5 * GiB)
    assert refused == ("over the pinned budget: 6.0 GiB of 10.0 GiB registered, this mapping needs 5.0 GiB "
                       "(HEARTH_PIN_BUDGET)") and b.used == 6 * GiB  # refused whole, nothing counted
    assert b.take(4 * GiB) is None and b.used == 10 * GiB  # exactly the limit fits
    b.give_back(6 * GiB)
    assert b.used == 4 * GiB and b.take(5 * GiB) is None
    b.give_back(100 * GiB)
    assert b.used == 0


def test_budget_from_the_environment(monkeypatch):
    import psutil

    total = psutil.virtual_memory().total
    monkeypatch.delenv("HEARTH_PIN_BUDGET", raising=False)
    assert pinning.budget_from_env() == total // 2
    monkeypatch.setenv("HEARTH_PIN_BUDGET", "3G")
    assert pinning.budget_from_env() == 3 * GiB
    monkeypatch.setenv("HEARTH_PIN_BUDGET", "10%")
    assert pinning.budget_from_env() == total // 10
    monkeypatch.setenv("HEARTH_PIN_BUDGET", "lots")
    assert pinning.budget_from_env() == total // 2  # a bad value: the default, and a warning


def test_memlock_limit_is_reported():
    # A process with a lowered RLIMIT_MEMLOCK (as a login without the install's LimitMEMLOCK would be).
    code = textwrap.dedent("""
        import json, resource
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, hard))
        from comfyui_hearth.client import pinning
        print(json.dumps(pinning.status()["memlock"]))
        print(json.dumps(hard))
    """)
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    import json

    memlock, hard = json.loads(out[0]), json.loads(out[1])
    assert memlock["soft"] == 1 << 20
    assert memlock["hard"] == (None if hard == resource.RLIM_INFINITY else hard)
    assert pinning.memlock_limit()["soft"] in (None, resource.getrlimit(resource.RLIMIT_MEMLOCK)[0])
