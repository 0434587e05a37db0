"""Validation of safetensors headers, before the daemon publishes a segment and before a client maps one.

A safetensors file is: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data area.
Every check here names the field and the file, so a user knows which file is broken and how.
`safetensors.safe_open` (the Rust reference) is run on top by the daemon; this module adds the checks it
lacks (size limit, duplicate names, exact tiling, metadata types) and gives readable messages.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from .errors import BadHeader

MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class DType:
    """One safetensors dtype: bytes per element, the torch dtype's attribute name, whether it is a float."""

    size: int
    torch_name: str  # absent from older torch builds (the unsigned and some fp8 types)
    is_float: bool


# safetensors' own list. The sub-byte F4/F6 types are not cached: such files are refused here and loaded
# the stock way.
DTYPES = {
    "BOOL": DType(1, "bool", False), "U8": DType(1, "uint8", False), "I8": DType(1, "int8", False),
    "F8_E5M2": DType(1, "float8_e5m2", True), "F8_E4M3": DType(1, "float8_e4m3fn", True),
    "F8_E8M0": DType(1, "float8_e8m0fnu", True), "F8_E4M3FNUZ": DType(1, "float8_e4m3fnuz", True),
    "F8_E5M2FNUZ": DType(1, "float8_e5m2fnuz", True),
    "I16": DType(2, "int16", False), "U16": DType(2, "uint16", False), "F16": DType(2, "float16", True),
    "BF16": DType(2, "bfloat16", True),
    "I32": DType(4, "int32", False), "U32": DType(4, "uint32", False), "F32": DType(4, "float32", True),
    "I64": DType(8, "int64", False), "U64": DType(8, "uint64", False), "F64": DType(8, "float64", True),
    "C64": DType(8, "complex64", False),
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the data area
    end: int


@dataclass(frozen=True)
class Header:
    data_start: int  # absolute offset of the data area in the file
    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str]

    @property
    def data_size(self) -> int:
        return self.tensors[-1].end if self.tensors else 0


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise BadHeader(f"duplicate name {k!r} in header")
        seen[k] = v
    return seen


def parse_header(raw: bytes, file_size: int, name: str) -> Header:
    """Validate a header given the file's first bytes (at least 8 + N) and its total size."""
    if len(raw) < 8 or file_size < 8:
        raise BadHeader(f"{name}: file is {file_size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if n < 2 or n > MAX_HEADER:
        raise BadHeader(f"{name}: header length {n} is out of range (2 .. {MAX_HEADER})")
    if 8 + n > file_size:
        raise BadHeader(f"{name}: header length {n} runs past the end of the file ({file_size} bytes)")
    if len(raw) < 8 + n:
        raise BadHeader(f"{name}: header truncated ({len(raw) - 8} of {n} bytes)")
    try:
        text = raw[8:8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadHeader(f"{name}: header is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except BadHeader as e:
        raise BadHeader(f"{name}: {e.message}") from None
    except (ValueError, RecursionError) as e:
        raise BadHeader(f"{name}: header is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BadHeader(f"{name}: header is not a JSON object")

    # Only an absent or null __metadata__ means "none": [] or "" are as malformed as any other non-map.
    metadata = doc.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise BadHeader(f"{name}: __metadata__ must be a map of strings to strings")

    entries = [_entry(name, k, v) for k, v in doc.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    data_size = file_size - 8 - n
    pos = 0
    for e in entries:
        if e.begin != pos:
            what = "overlaps the previous tensor" if e.begin < pos else f"leaves a hole at {pos}"
            raise BadHeader(f"{name}: tensor {e.name!r} data_offsets [{e.begin}, {e.end}] {what}")
        pos = e.end
    if pos != data_size:
        raise BadHeader(f"{name}: tensors cover {pos} bytes but the data area holds {data_size}")
    return Header(8 + n, tuple(entries), metadata)


def _entry(fname: str, key: str, v: object) -> TensorEntry:
    where = f"{fname}: tensor {key!r}"
    if not isinstance(v, dict) or set(v) != {"dtype", "shape", "data_offsets"}:
        raise BadHeader(f"{where} must be {{dtype, shape, data_offsets}}, got {str(v)[:80]}")
    dtype, shape, offs = v["dtype"], v["shape"], v["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:  # a list or object is not even hashable
        raise BadHeader(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadHeader(f"{where}: shape must be a list of integers >= 0, got {shape!r}")
    if (not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs)
            or not 0 <= offs[0] <= offs[1]):
        raise BadHeader(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offs!r}")
    nbytes = DTYPES[dtype].size
    for d in shape:  # Python ints do not overflow, but a hostile shape must not make us build huge numbers
        nbytes *= d
        if nbytes > 1 << 62:
            raise BadHeader(f"{where}: shape {shape} is impossibly large")
    if offs[1] - offs[0] != nbytes:
        raise BadHeader(f"{where}: data_offsets span {offs[1] - offs[0]} bytes but dtype {dtype} "
                        f"and shape {shape} need {nbytes}")
    return TensorEntry(key, dtype, tuple(shape), offs[0], offs[1])


def read_header(fd: int, name: str) -> Header:
    """Read and validate the header of an open file (descriptor position is not used)."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) == 8:
        (n,) = struct.unpack("<Q", head)
        if 2 <= n <= MAX_HEADER and 8 + n <= size:
            head += os.pread(fd, n, 8)
    return parse_header(head, size, name)
