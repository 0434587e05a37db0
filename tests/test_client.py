"""The client's side: degrade-don't-fail, pickles, HEARTH_DISABLE, the mapping's life time, roots."""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import pickle

import pytest
import torch
from safetensors import SafetensorError, safe_open

from conftest import assert_same_tensors, make_model, reference
from hostile import CASES

client = importlib.import_module("comfyui_hearth.client.load")
connection = importlib.import_module("comfyui_hearth.client.connection")


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hearth.client" and r.levelno >= logging.WARNING]


def test_disabled_client_never_contacts_the_daemon(in_process, monkeypatch, caplog):
    d = in_process
    path = make_model(d.models / "m.safetensors")
    monkeypatch.setenv("HEARTH_DISABLE", "1")
    before = d.io()
    r = client.load(str(path))
    assert d.io()["rchar"] == before["rchar"]  # not one byte of a request reached the daemon
    assert not r.cached and "HEARTH_DISABLE" in r.reason
    assert_same_tensors(r.tensors, reference(path))
    assert d.status()["stats"] == {"hits": 0, "misses": 0, "fills": 0, "evictions": 0}


def test_no_daemon_falls_back_and_says_why_once(tmp_path, monkeypatch, caplog):
    for k in [k for k in os.environ if k.startswith("HEARTH_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(client, "_said", set())
    path = make_model(tmp_path / "m.safetensors")
    for _ in range(3):
        r = client.load(str(path))
        assert not r.cached and "not running" in r.reason
        assert_same_tensors(r.tensors, reference(path))
    assert len(_fallback_lines(caplog)) == 1, _fallback_lines(caplog)

    # an announcement left by a dead daemon
    (tmp_path / "home").mkdir(mode=0o700)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (tmp_path / "home" / "daemon.json").write_text(json.dumps({"pid": dead, "port": 1, "protocol": 1}))
    r = client.load(str(path))
    assert not r.cached and "gone" in r.reason
    # a live pid (ours) but nothing listening on the port
    (tmp_path / "home" / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "port": 1, "protocol": 1}))
    (tmp_path / "home" / "token").write_text("t")
    (tmp_path / "home" / "token").chmod(0o600)
    r = client.load(str(path))
    assert not r.cached and "did not answer" in r.reason
    assert_same_tensors(r.tensors, reference(path))


def test_client_of_another_protocol_falls_back(in_process, monkeypatch):
    d = in_process
    path = make_model(d.models / "m.safetensors")
    monkeypatch.setattr(connection, "PROTOCOL", connection.PROTOCOL + 1)  # as a newer client would be
    r = client.load(str(path))
    assert not r.cached and "protocol" in r.reason
    assert_same_tensors(r.tensors, reference(path))
    assert d.status()["stats"]["misses"] == 0


def test_refusals_fall_back_to_the_stock_load(in_process, tmp_path):
    d = in_process
    outside = make_model(tmp_path / "elsewhere" / "m.safetensors", seed=3)
    r = client.load(str(outside))
    assert not r.cached and "outside the allowed" in r.reason
    assert_same_tensors(r.tensors, reference(outside))
    # a file only Hearth refuses (safetensors accepts an entry with an extra key): the stock result
    cid, data, _, ref_refuses = next(c for c in CASES if c[0] == "entry_extra_key")
    assert not ref_refuses
    odd = d.models / "odd.safetensors"
    odd.write_bytes(data)
    r = client.load(str(odd))
    assert not r.cached and "must be {dtype, shape, data_offsets}" in r.reason
    assert_same_tensors(r.tensors, reference(odd))
    # a file both refuse: the stock error, never a partial or wrong tensor
    bad = d.models / "bad.safetensors"
    bad.write_bytes(next(c for c in CASES if c[0] == "offsets_overlap")[1])
    with pytest.raises(SafetensorError):
        client.load_state_dict(str(bad))


def test_register_roots_allows_a_folder(in_process, tmp_path):
    path = make_model(tmp_path / "comfy" / "checkpoints" / "m.safetensors")
    assert not client.load(str(path)).cached
    client.register_roots([str(path.parent)])
    try:
        r = client.load(str(path))
        assert r.cached, r.reason
    finally:
        client._roots.clear()
        client._roots_sent_to = None


def test_mapping_lives_exactly_as_long_as_a_tensor(in_process):
    d = in_process
    path = make_model(d.models / "life.safetensors")
    r = client.load(str(path))
    assert r.cached
    keep = r.tensors["model.f32"]
    want = reference(path)["model.f32"]
    del r
    gc.collect()
    assert os.getpid() in d.segment(path)["holders"]  # one tensor keeps the mapping and its flock
    assert torch.equal(keep, want)
    del keep
    gc.collect()
    d.wait_for(lambda: os.getpid() not in d.segment(path)["holders"], timeout=3, what="the flock to go")
    # and the daemon may now evict it as unheld
    ans = d.ok("POST", "/v1/evict", {"path": str(path)})
    assert [e["path"] for e in ans["evicted"]] == [str(path)] and ans["pending"] == []


def test_a_cached_load_carries_the_header_metadata(in_process):
    d = in_process
    meta = {"format": "pt", "modelspec.architecture": "stable-diffusion-v1"}
    with_meta = make_model(d.models / "meta.safetensors", metadata=meta)
    without = make_model(d.models / "plain.safetensors", seed=1)
    r = client.load(str(with_meta))
    assert r.cached and r.metadata == meta == safe_open(str(with_meta), framework="pt").metadata()
    r = client.load(str(without))
    assert r.cached and r.metadata is None is safe_open(str(without), framework="pt").metadata()


def test_load_state_dict_device(in_process):
    d = in_process
    path = make_model(d.models / "dev.safetensors")
    sd = client.load_state_dict(str(path))
    assert all(t.device.type == "cpu" for t in sd.values())
    assert_same_tensors(sd, reference(path))
    import comfyui_hearth

    assert comfyui_hearth.load_state_dict is client.load_state_dict


# ---- pickles ------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_checkpoints_load_weights_only_and_are_not_cached(in_process):
    d = in_process
    sd = {"w": torch.randn(4, 4), "b": torch.arange(3)}
    for name, obj in (("plain.ckpt", sd), ("wrapped.pt", {"state_dict": sd, "epoch": 3})):
        p = d.models / name
        torch.save(obj, p)
        r = client.load(str(p))
        assert not r.cached and "pickles" in r.reason
        assert_same_tensors(r.tensors, sd)
    assert d.status()["stats"]["misses"] == 0 and d.final_names() == []


def test_pickle_with_an_int_device_loads_onto_that_cuda_device(in_process):
    """An int device is a CUDA index, as safetensors' load_file takes it: the pickle's stock load gives it
    to torch.load as cuda:N (torch.load would call a bare int as a map_location function)."""
    p = in_process.models / "plain.ckpt"
    sd = {"w": torch.randn(4, 4)}
    torch.save(sd, p)
    if torch.cuda.is_available():
        r = client.load(str(p), 0)
        assert not r.cached and r.tensors["w"].device == torch.device("cuda:0")
        assert torch.equal(r.tensors["w"].cpu(), sd["w"])
        return
    with pytest.raises(RuntimeError) as stock:  # what torch.load itself says for cuda:0 on this machine
        torch.load(p, map_location="cuda:0", weights_only=True)
    with pytest.raises(RuntimeError) as ours:
        client.load(str(p), 0)
    assert str(ours.value) == str(stock.value)


@pytest.mark.parametrize("name", ["evil.ckpt", "evil.pt", "evil.pth", "evil.bin", "evil.safetensors"])
def test_malicious_pickle_is_refused_without_running(in_process, tmp_path, name):
    d = in_process
    marker = tmp_path / "pwned"
    p = d.models / name
    if name.endswith(".safetensors"):
        p.write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
    else:
        torch.save({"w": torch.ones(2), "x": _Evil(str(marker))}, p)
    with pytest.raises(Exception) as info:
        client.load_state_dict(str(p))
    assert not marker.exists(), "the pickle ran code"
    assert isinstance(info.value, (pickle.UnpicklingError, SafetensorError)), repr(info.value)
    # sanity: the file really is hostile
    if not name.endswith(".safetensors"):
        torch.load(p, weights_only=False)
        assert marker.exists()


def test_report_strategy_is_a_no_op_when_down(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "nohome"))
    client.report_strategy({"strategy": "cpu"})  # must not raise


def test_report_strategy_reaches_the_daemon(in_process):
    client.report_strategy({"strategy": "partial", "model": "x"})
    assert in_process.status()["strategy"]["strategy"] == "partial"
