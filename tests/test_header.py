"""daemon/header.py on its own: valid files parse as safetensors sees them; hostile files are refused by name."""

from __future__ import annotations

import json
import os
import struct

import pytest
from safetensors import safe_open

from comfyui_hearth.client.mapping import map_segment
from comfyui_hearth.core.errors import BadHeader
from comfyui_hearth.core.safetensors_format import DTYPES, MAX_HEADER, parse_header, read_header
from conftest import make_model, sample_tensors
from hostile import CASES, GOOD, file, t


def _safe_open_refuses(path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
            f.metadata()
    except Exception:  # noqa: BLE001 - SafetensorError, or anything else the reference raises
        return True
    return False


def test_valid_file_matches_safe_open(tmp_path):
    path = make_model(tmp_path / "m.safetensors", metadata={"format": "pt", "note": "héllo"})
    with open(path, "rb") as f:
        header = read_header(f.fileno(), str(path))
    with safe_open(str(path), framework="pt") as f:
        assert header.metadata == f.metadata()
        names = set(f.keys())
        for e in header.tensors:
            got = f.get_slice(e.name)
            assert list(got.get_shape()) == list(e.shape), e.name
            assert got.get_dtype() == e.dtype, e.name
    assert {e.name for e in header.tensors} == names == set(sample_tensors())
    # the tensors tile the data area exactly, in order
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert header.data_start == 8 + n
    assert header.data_size == len(raw) - 8 - n


def test_minimal_files_are_valid():
    assert parse_header(file("{}"), 10, "f").tensors == ()
    h = parse_header(file({"__metadata__": None}), len(file({"__metadata__": None})), "f")
    assert h.metadata == {}
    # zero-sized tensors share an offset with their neighbours
    b = file({"e": t(shape=(0, 3), offs=(0, 0)), "a": t(), "z": t(shape=(4, 0), offs=(8, 8))}, bytes(8))
    h = parse_header(b, len(b), "f")
    assert [e.name for e in h.tensors] == ["e", "a", "z"]
    assert not _refuses_bytes(b)


def _refuses_bytes(data: bytes) -> bool:
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".safetensors")
    try:
        os.write(fd, data)
        os.close(fd)
        return _safe_open_refuses(path)
    finally:
        os.unlink(path)


def test_good_sample_is_accepted_by_both(tmp_path):
    p = tmp_path / "good.safetensors"
    p.write_bytes(GOOD)
    assert not _safe_open_refuses(p)
    h = parse_header(GOOD, len(GOOD), str(p))
    assert [e.name for e in h.tensors] == ["a", "b"] and h.metadata == {"format": "pt"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_header_refused(case, tmp_path):
    cid, data, words, reference_refuses = case
    path = tmp_path / f"{cid}.safetensors"
    path.write_bytes(data)
    with pytest.raises(BadHeader) as info:
        with open(path, "rb") as f:
            read_header(f.fileno(), str(path))
    msg = info.value.message
    assert str(path) in msg, msg  # names the file
    for w in words:
        assert w in msg, (w, msg)  # names the field
    assert info.value.code == "bad_header"
    # the reference implementation, on the same bytes
    assert _safe_open_refuses(path) == reference_refuses, \
        f"safetensors.safe_open {'accepts' if reference_refuses else 'refuses'} {cid} now: update the table"


def test_parse_header_with_short_buffer_is_refused():
    # the caller gave fewer bytes than the header length says: refused, not an IndexError
    b = file({"a": t()}, bytes(8))
    with pytest.raises(BadHeader, match="truncated"):
        parse_header(b[:20], len(b), "f")


def test_limits():
    assert MAX_HEADER == 100 * 1024 * 1024
    # exactly at the limit the length is accepted (and then checked against the file's size)
    b = struct.pack("<Q", MAX_HEADER)
    with pytest.raises(BadHeader, match="past the end"):
        parse_header(b, 8 + MAX_HEADER - 1, "f")
    # the one dtype table agrees with this torch and with safetensors' own table of names
    from safetensors.torch import _TYPES

    from comfyui_hearth.client.mapping import TORCH_DTYPES

    assert set(TORCH_DTYPES) == set(DTYPES)
    for name, dt in TORCH_DTYPES.items():
        if dt is not None:
            assert dt.itemsize == DTYPES[name].size, name
            assert dt.is_floating_point == (DTYPES[name].is_float and name != "C64"), name
        if name in _TYPES:
            assert _TYPES[name] == dt, name


def test_client_validates_segment_before_mapping(tmp_path):
    """The client checks the header of what it maps (a segment is never trusted blindly)."""
    cid, data, _, _ = next(c for c in CASES if c[0] == "offsets_overlap")
    seg = tmp_path / "seg"
    seg.write_bytes(data)
    with pytest.raises(BadHeader, match="overlaps"):
        map_segment(str(seg), len(data), "model.safetensors")
    with pytest.raises(Exception, match="expected"):  # a size other than the daemon announced
        map_segment(str(seg), len(data) + 1, "model.safetensors")


def test_header_json_is_never_evaluated(tmp_path):
    # a header that is Python but not JSON is not JSON
    b = file("{'a': __import__('os').system('false')}")
    with pytest.raises(BadHeader, match="not valid JSON"):
        parse_header(b, len(b), "f")
    # a key that looks like code is just a name
    b = file(json.dumps({"__import__('os')": t()}), bytes(8))
    assert parse_header(b, len(b), "f").tensors[0].name == "__import__('os')"


def test_a_header_passed_once_is_known_by_its_bytes_and_the_file_size(tmp_path):
    """read_header keeps what passed by (header bytes, file size): the same header in a file of another size
    is validated afresh (and refused where its tensors no longer tile the file), and the metadata a mapping
    hands out is the caller's own, not the kept header's."""
    path = make_model(tmp_path / "m.safetensors", metadata={"format": "pt"})
    with open(path, "rb") as f:
        first = read_header(f.fileno(), str(path))
        assert read_header(f.fileno(), str(path)) is first
    for cut in (1, 8):
        short = tmp_path / f"short{cut}.safetensors"
        short.write_bytes(path.read_bytes()[:-cut])
        with pytest.raises(BadHeader, match="data area"), open(short, "rb") as f:
            read_header(f.fileno(), str(short))
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(path.read_bytes() + bytes(8))
    with pytest.raises(BadHeader, match="data area"), open(longer, "rb") as f:
        read_header(f.fileno(), str(longer))

    _, metadata = map_segment(str(path), path.stat().st_size, "m")
    metadata["format"] = "changed by the caller"
    _, again = map_segment(str(path), path.stat().st_size, "m")
    assert again == {"format": "pt"} and first.metadata == {"format": "pt"}
