"""comfyui_hearth.load_state_dict as a drop-in for safetensors.torch.load_file.

The same arguments, the same tensors, and for a file or a device the stock load refuses, the same exception
(type and message): scripts that swap one for the other must not behave differently on bad input. Patching
load_file to Hearth (the one-line speedup users write) must not recurse through the fallback.
"""

from __future__ import annotations

import importlib
import logging

import pytest
import safetensors.torch
import torch

from conftest import assert_same_tensors, make_model, reference
from hostile import CASES, file, t

client = importlib.import_module("comfyui_hearth.client.load")
STOCK_LOAD_FILE = safetensors.torch.load_file


def _outcome(fn, *args, **kw):
    """('ok', tensors) or ('raised', type, message)."""
    try:
        return ("ok", fn(*args, **kw))
    except Exception as e:  # noqa: BLE001 - compared as they are
        return ("raised", type(e), str(e))


def _same_outcome(ours, stock) -> None:
    assert ours[0] == stock[0], (ours[:2], stock[:2])
    if stock[0] == "ok":
        assert_same_tensors(ours[1], {k: v.clone() for k, v in stock[1].items()})
    else:
        assert ours[1:] == stock[1:]


@pytest.mark.parametrize("cid, data", [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_files_raise_what_a_stock_load_raises(shared_daemon, in_process_env, caplog, cid, data):
    d = shared_daemon
    path = d.models / f"{cid}.safetensors"
    path.write_bytes(data)
    with in_process_env(d), caplog.at_level(logging.WARNING, logger="hearth.client"):
        ours = _outcome(client.load_state_dict, str(path))
    _same_outcome(ours, _outcome(STOCK_LOAD_FILE, str(path)))
    assert d.segment(path) is None  # refused by the cache, whatever the stock load made of it
    reasons = [r.getMessage() for r in caplog.records if r.name == "hearth.client"]
    assert reasons and all("\n" not in r for r in reasons), reasons


def test_shapes_a_stock_load_accepts_are_served(in_process):
    """Zero-element tensors whose strides overflow torch.empty(shape) but not a reshape, as safetensors makes."""
    d = in_process
    path = d.models / "odd_shapes.safetensors"
    path.write_bytes(file({"a": t(shape=(0, 2**62, 4), offs=(0, 0)), "b": t("I8", (3, 0, 5), (0, 0)),
                           "c": t(shape=(2,), offs=(0, 8))}, bytes(8)))
    r = client.load(str(path))
    assert r.cached, r.reason
    assert_same_tensors(r.tensors, reference(path))


def test_a_load_file_patched_to_hearth_does_not_recurse(in_process, monkeypatch):
    d = in_process
    good = make_model(d.models / "good.safetensors")
    bad = d.models / "bad.safetensors"
    bad.write_bytes(next(c[1] for c in CASES if c[0] == "offsets_overlap"))
    stock_bad = _outcome(STOCK_LOAD_FILE, str(bad))
    import comfyui_hearth

    monkeypatch.setattr(safetensors.torch, "load_file", comfyui_hearth.load_state_dict)
    assert_same_tensors(safetensors.torch.load_file(str(good)), reference(good))
    assert d.status()["stats"]["misses"] == 1  # it went through the cache
    _same_outcome(_outcome(safetensors.torch.load_file, str(bad)), stock_bad)
    # with the daemon gone, the fallback reads the file through safetensors' own primitive
    d.stop()
    monkeypatch.setattr(client, "_said", set())
    assert_same_tensors(safetensors.torch.load_file(str(good), device="cpu"), reference(good))


CUDA = torch.cuda.is_available()


# load_file refuses torch.device objects and "cpu:0" (safetensors 0.8): so does the drop-in
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cpu:0"], ids=str)
def test_cpu_devices_like_load_file(shared_daemon, in_process_env, device):
    path = make_model(shared_daemon.models / "dev.safetensors")
    with in_process_env(shared_daemon):
        ours = _outcome(client.load_state_dict, path, device=device)
    _same_outcome(ours, _outcome(STOCK_LOAD_FILE, path, device=device))


@pytest.mark.parametrize("device", ["cuda", "cuda:0", 0, torch.device("cuda", 0), "meta", "nonsense", "cuda:999"],
                         ids=str)
def test_other_devices_like_load_file(shared_daemon, in_process_env, device):
    """Without CUDA every one of these fails; with it the tensors land on the GPU. Either way, as stock."""
    path = make_model(shared_daemon.models / "dev.safetensors")
    with in_process_env(shared_daemon):
        ours = _outcome(client.load_state_dict, path, device=device)
    stock = _outcome(STOCK_LOAD_FILE, path, device=device)
    if stock[0] == "ok":
        assert ours[0] == "ok"
        for k, v in stock[1].items():
            assert ours[1][k].device == v.device and torch.equal(ours[1][k].cpu(), v.cpu()), k
    else:
        assert ours[1:] == stock[1:], (ours, stock)
