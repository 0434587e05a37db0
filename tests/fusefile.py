"""One read-only file on a FUSE mount whose reads can fail with EIO: a real read error from a real kernel.

The kernel's FUSE driver forwards every read of the file to this process over /dev/fuse; while `failing`
is set, a read that touches the bad byte range is answered EIO, as a disk with a bad sector answers. No
libfuse: the handful of requests a mounted file needs (INIT, LOOKUP, GETATTR, OPEN, READ, RELEASE, ...)
are answered here from the protocol's structures (linux/fuse.h, protocol 7.31), everything else ENOSYS.
Mounting needs root (CAP_SYS_ADMIN) and /dev/fuse; `FuseFile.mount` raises OSError where they are missing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import threading
import time
from pathlib import Path

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
# ino, size, blocks, atime, mtime, ctime, their ns, mode, nlink, uid, gid, rdev, blksize, flags
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE, FLUSH, INIT, DESTROY, INTERRUPT, BATCH_FORGET = (
    1, 2, 3, 14, 15, 17, 18, 25, 26, 38, 36, 42)
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}
ROOT, FILE = 1, 2
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


class FuseFile:
    """`mount/name` holds `data`; reads touching [bad_begin, bad_end) fail with EIO while `failing`."""

    def __init__(self, mount: Path, name: str, data: bytes, bad: tuple[int, int]):
        self.mount, self.name, self.data = mount, name, data
        self.bad_begin, self.bad_end = bad
        self.failing = threading.Event()
        self.failing.set()
        self.failed_reads = 0
        self.mtime = int(time.time())
        self._fd = -1
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.mount / self.name

    def mount_it(self) -> FuseFile:
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        opts = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if libc.mount(b"hearth-test", str(self.mount).encode(), b"fuse", MS_NOSUID | MS_NODEV, opts) != 0:
            e = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(e, f"mount -t fuse {self.mount}: {os.strerror(e)}")
        self._thread = threading.Thread(target=self._serve, name="fusefile", daemon=True)
        self._thread.start()
        return self

    def unmount(self) -> None:
        ctypes.CDLL(None, use_errno=True).umount2(str(self.mount).encode(), MNT_DETACH)
        if self._thread is not None:
            self._thread.join(5)
        os.close(self._fd)

    # the protocol

    def _attr(self, node: int) -> bytes:
        if node == ROOT:
            return ATTR.pack(ROOT, 0, 0, self.mtime, self.mtime, self.mtime, 0, 0, 0, stat.S_IFDIR | 0o755, 2,
                             0, 0, 0, 4096, 0)
        size = len(self.data)
        return ATTR.pack(FILE, size, (size + 511) // 512, self.mtime, self.mtime, self.mtime, 0, 0, 0,
                         stat.S_IFREG | 0o644, 1, 0, 0, 0, 4096, 0)

    def _answer(self, opcode: int, node: int, body: bytes) -> tuple[int, bytes]:
        if opcode == INIT:
            major, minor, readahead, _flags = struct.unpack_from("<IIII", body)
            return 0, struct.pack("<IIIIHHIIHHI", 7, 31, readahead, 0, 16, 12, 1 << 17, 1, 32, 0, 0) + bytes(28)
        if opcode == LOOKUP:
            if node == ROOT and body.rstrip(b"\0") == self.name.encode():
                return 0, struct.pack("<QQQQII", FILE, 0, 1, 1, 0, 0) + self._attr(FILE)
            return -errno.ENOENT, b""
        if opcode == GETATTR:
            return 0, struct.pack("<QII", 1, 0, 0) + self._attr(node)
        if opcode == OPEN:
            return 0, struct.pack("<QIi", 0, 0, 0)
        if opcode == READ:
            _fh, offset, size = struct.unpack_from("<QQI", body)
            end = min(offset + size, len(self.data))
            if self.failing.is_set() and offset < self.bad_end and end > self.bad_begin:
                self.failed_reads += 1
                return -errno.EIO, b""
            return 0, self.data[offset:end]
        if opcode == STATFS:
            return 0, struct.pack("<QQQQQIIII", 0, 0, 0, 0, 0, 4096, 255, 4096, 0) + bytes(24)
        if opcode in (RELEASE, FLUSH, DESTROY):
            return 0, b""
        return -errno.ENOSYS, b""

    def _serve(self) -> None:
        while True:
            try:
                request = os.read(self._fd, (1 << 17) + 4096)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):  # ENOENT: a request interrupted
                    continue
                return  # ENODEV: unmounted
            length, opcode, unique, node, *_ = IN_HEADER.unpack_from(request)
            if opcode in NO_REPLY:
                continue
            error, body = self._answer(opcode, node, request[IN_HEADER.size:length])
            try:
                os.write(self._fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body)
            except OSError:  # the request was interrupted meanwhile: the kernel no longer waits for it
                pass
