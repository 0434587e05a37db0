"""The safetensors format: its dtypes, and the validation of headers before a segment is published or mapped.

A safetensors file is: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data area.
Every header is held to two parsers. This module's own names the field and the file in every refusal (one
line, hostile names shortened) and is stricter where safetensors is lenient: a size limit, duplicate names,
exact tiling of the data area, string-to-string metadata, dimensions torch can hold. safetensors' own Rust
parser (`safe_open`, the reference every stock loader uses) runs on top, so a file that a stock load refuses
is never served from the cache: Hearth refuses it and the caller's fallback raises the stock error.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections import OrderedDict
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


# torch sizes are int64: a larger dimension cannot be a tensor (a stock load fails on it too)
MAX_DIM = (1 << 63) - 1


def _show(value: object) -> str:
    """A hostile name or value as it goes into a message: repr'd, on one line, at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON's `\ud800` escape), which no UTF-8 reader accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise BadHeader(f"duplicate name {_show(k)} in header")
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
    bad = next((x for kv in metadata.items() for x in kv if not _is_unicode(x)), None)
    if bad is not None:
        raise BadHeader(f"{name}: __metadata__ holds {_show(bad)}, not valid Unicode (a lone surrogate)")

    entries = [_entry(name, k, v) for k, v in doc.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    data_size = file_size - 8 - n
    pos = 0
    for entry in entries:
        if entry.begin != pos:
            what = "overlaps the previous tensor" if entry.begin < pos else f"leaves a hole at {pos}"
            raise BadHeader(f"{name}: tensor {_show(entry.name)} data_offsets [{entry.begin}, {entry.end}] {what}")
        pos = entry.end
    if pos != data_size:
        raise BadHeader(f"{name}: tensors cover {pos} bytes but the data area holds {data_size}")
    return Header(8 + n, tuple(entries), metadata)


def _entry(fname: str, key: str, v: object) -> TensorEntry:
    where = f"{fname}: tensor {_show(key)}"
    if not _is_unicode(key):
        raise BadHeader(f"{where}: the name is not valid Unicode (a lone surrogate)")
    if not isinstance(v, dict) or set(v) != {"dtype", "shape", "data_offsets"}:
        raise BadHeader(f"{where} must be {{dtype, shape, data_offsets}}, got {_show(v)}")
    dtype, shape, offs = v["dtype"], v["shape"], v["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:  # a list or object is not even hashable
        raise BadHeader(f"{where}: unknown dtype {_show(dtype)}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
        raise BadHeader(f"{where}: shape must be a list of integers from 0 to 2^63-1, got {_show(shape)}")
    if (not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs)
            or not 0 <= offs[0] <= offs[1]):
        raise BadHeader(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {_show(offs)}")
    nbytes = DTYPES[dtype].size
    for d in shape:  # Python ints do not overflow, but a hostile shape must not make us build huge numbers
        nbytes *= d
        if nbytes > 1 << 62:
            raise BadHeader(f"{where}: shape {_show(shape)} is impossibly large")
    if offs[1] - offs[0] != nbytes:
        raise BadHeader(f"{where}: data_offsets span {offs[1] - offs[0]} bytes but dtype {dtype} "
                        f"and shape {_show(shape)} need {nbytes}")
    return TensorEntry(key, dtype, tuple(shape), offs[0], offs[1])


# Headers both parsers accepted, by their bytes and the file's size, which are all that validation reads:
# the same bytes in a file of the same size pass again. A refill (the same file copied again after an
# eviction) and every process mapping its new segment repeat them, and the parse costs ~2 ms per 200
# tensors of Python in the daemon's fill threads, which share the interpreter with its event loop.
_VALID_KEPT = 8 << 20  # bytes of headers kept in all
_VALID_ONE = 1 << 20  # a header over this is not kept
_valid: OrderedDict[tuple[bytes, int], Header] = OrderedDict()
_valid_bytes = 0
_valid_lock = threading.Lock()


def read_header(fd: int, name: str) -> Header:
    """Read and validate the header of an open file by both parsers (descriptor position is not used)."""
    global _valid_bytes
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) == 8:
        (n,) = struct.unpack("<Q", head)
        if 2 <= n <= MAX_HEADER and 8 + n <= size:
            head += os.pread(fd, n, 8)
    with _valid_lock:
        if (header := _valid.get((head, size))) is not None:
            _valid.move_to_end((head, size))
            return header
    header = parse_header(head, size, name)
    _reference_check(fd, name)
    if len(head) <= _VALID_ONE:
        with _valid_lock:
            if (head, size) not in _valid:
                _valid[head, size] = header
                _valid_bytes += len(head)
            while _valid_bytes > _VALID_KEPT:
                _valid_bytes -= len(_valid.popitem(last=False)[0][0])
    return header


def _reference_check(fd: int, name: str) -> None:
    """Refuse what safetensors' own parser refuses (imported here: the daemon needs no torch for it)."""
    from safetensors import SafetensorError, safe_open

    try:
        # framework numpy: only the header is parsed; no tensor is made, so neither numpy nor torch loads
        with safe_open(f"/proc/self/fd/{fd}", framework="numpy"):
            pass
    except SafetensorError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadHeader(f"{name}: safetensors refuses it: {reason[:200]}") from None
