"""Segments: byte-exact images of .safetensors files in the user's tmpfs, filled, published, adopted.

A segment is written under a `.part` name, validated, checked against its source once more, and only then
renamed to its final name, so nobody ever maps a half-filled segment. Holders (clients mapping it) keep a
shared flock on it; the kernel drops that lock when a holder dies, which makes it the ground truth.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import logging
import mmap
import os
import queue
import secrets
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from ..core.errors import NotAllowed, NotFound, ShmFull, SourceChanged, SourceUnreadable
from ..core.home import hearth_home, shm_dir
from ..core.safetensors_format import Header, read_header
from .page_cache import Residency
from .room import Room

log = logging.getLogger("hearth.segments")

# 16 MiB pieces keep FILL_THREADS reads in flight even for a 100 MB LoRA (SSDs want queue depth)
CHUNK = 16 << 20
FILL_THREADS = 4
DIRECT_ALIGN = 4096  # O_DIRECT needs offsets, lengths and buffers aligned to the device's block size


@dataclass(frozen=True)
class SourceId:
    """The identity of a source file; any change to it gives a new key.

    ctime is part of it because mtime alone can be set back (`touch -d`, `cp -p`, an in-place rewrite
    within one timestamp tick) while ctime cannot: serving the old bytes then would be a wrong tensor.
    The price is a refill after chmod or chown, which change ctime too.
    """

    path: str  # real path
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, real_path: str, st: os.stat_result | None = None) -> SourceId:
        st = st or os.stat(real_path)
        return cls(real_path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @functools.cached_property
    def key(self) -> str:
        # kept: the daemon's loop looks keys up for every request (a frozen instance never changes)
        h = hashlib.blake2b(repr(tuple(self.record().values())).encode(), digest_size=8)
        return h.hexdigest()

    def record(self) -> dict:
        """The fields, for index.json and for comparing (a flat dataclasses.asdict, without its deep copy)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def mismatch(self, other: SourceId) -> str | None:
        """Name the first field that differs from `other`, or None when they are the same file."""
        for field, value in self.record().items():
            if getattr(other, field) != value:
                return field
        return None


def identify(real_path: str, given: str) -> SourceId:
    """The identity of the regular file at `real_path`, checked to be the file that path names now.

    The file is opened (never following a final symlink, never blocking on a FIFO) and the kernel's name of
    the opened file must still be `real_path`: a component swapped for a symlink after `realpath` leads
    elsewhere and is refused. `given` is the caller's name for the file, for messages.
    """
    try:
        fd = os.open(real_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"{given}: no such file") from None
    except OSError as e:  # a name too long, a symlink planted after realpath, no permission: a refusal
        raise NotAllowed(f"{given}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        opened = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise NotAllowed(f"{given}: not a regular file")
    if opened != real_path:
        raise SourceChanged(f"{given} changed while it was being opened (it led to {opened})")
    return SourceId.of(real_path, st)


def _open_source(source: SourceId, flags: int = 0) -> int:
    """Open the source by name and check that the file opened is the one identified (a rename or a
    rewrite since then gives SourceChanged, never another file's bytes)."""
    try:
        fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC | flags)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceChanged(f"{source.path} vanished before it could be read") from None
    try:
        if (mismatch := source.mismatch(SourceId.of(source.path, os.fstat(fd)))) is not None:
            raise SourceChanged(f"{source.path} changed ({mismatch}) before it could be read")
    except BaseException:
        os.close(fd)
        raise
    return fd


def prefix() -> str:
    """`hearth-<uid>-<home>-`: <home> tells apart daemons of one user with different HEARTH_HOMEs (test
    runs, benchmarks), so that a starting daemon cleans up only its own leftovers."""
    return _prefix(str(hearth_home()), os.getuid())


@functools.lru_cache(maxsize=8)
def _prefix(home: str, uid: int) -> str:
    # kept per home as named: every acquire names its segment, and realpath is a syscall per component
    real = os.path.realpath(home)
    return f"hearth-{uid}-{hashlib.blake2b(real.encode(), digest_size=3).hexdigest()}-"


def segment_path(key: str) -> Path:
    return shm_dir() / f"{prefix()}{key}"


def part_path(key: str) -> Path:
    """A fill's name until it is published. Its random part keeps another user of a shared /dev/shm from
    planting it ahead (the create is exclusive: a planted name would stop every fill of the key)."""
    return shm_dir() / f".{prefix()}{key}.{os.getpid()}.{secrets.token_hex(4)}.part"


def _not_theirs(key: str, source: SourceId) -> None:
    """Refuse to fill a key whose final name another user holds: in a sticky /dev/shm the rename that
    publishes would fail after the whole copy, and no client would map their file anyway."""
    try:
        st = os.lstat(segment_path(key))
    except FileNotFoundError:
        return
    if st.st_uid != os.getuid() or not stat.S_ISREG(st.st_mode):
        raise NotAllowed(_planted(key, source, st.st_uid))


def _planted(key: str, source: SourceId, uid: int | str) -> str:
    return (f"{segment_path(key)} belongs to another user (uid {uid}), so {source.path} cannot be cached; "
            f"remove that file, or give Hearth a folder of its own (HEARTH_SHM_DIR)")


def is_held(fd: int) -> bool:
    """True while any process holds a shared flock on the segment (a client mapping it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def holder_pids(fd: int) -> list[int]:
    """The pids holding flocks on this file, read from /proc/locks (empty where that is unavailable)."""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  READ  1234 00:1a:5678 0 EOF" (blocked waiters carry "->")
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == dev:
                    pids.add(int(parts[4]))
    except (OSError, ValueError):
        return []
    return sorted(pids - {os.getpid()})


def _sendfile_ranges(src_fd: int, dst_path: Path) -> Callable[[int, int, Callable[[int], None]], None]:
    """Copy ranges through the page cache with sendfile (any file system)."""
    def copy(begin: int, end: int, done: Callable[[int], None]) -> None:
        # sendfile writes at the destination's own file position, so each range opens its own descriptor.
        dst = os.open(dst_path, os.O_WRONLY)
        try:
            os.lseek(dst, begin, os.SEEK_SET)
            pos = begin
            while pos < end:
                n = os.sendfile(dst, src_fd, pos, end - pos)
                if n == 0:
                    raise SourceChanged(f"source ended early at byte {pos} of {end}")
                pos += n
                done(n)
        finally:
            os.close(dst)
    return copy


def _direct_ranges(direct_fd: int, view: memoryview) -> Callable[[int, int, Callable[[int], None]], None]:
    """Read ranges with O_DIRECT straight into the segment's pages: the disk's DMA lands in the tmpfs,
    with no page-cache copy in between (measured here: ~25 % faster than sendfile from a cold disk)."""
    def copy(begin: int, end: int, done: Callable[[int], None]) -> None:
        pos = begin
        while pos < end:
            n = os.preadv(direct_fd, [view[pos:end]], pos)
            if n == 0:
                raise SourceChanged(f"source ended early at byte {pos} of {end}")
            pos += n
            done(n)
    return copy


def _in_room(room: Room, copy: Callable[[int, int, Callable[[int], None]], None]
             ) -> Callable[[int, int, Callable[[int], None]], None]:
    def copy_in_room(begin: int, end: int, done: Callable[[int], None]) -> None:
        room.take(begin, end)
        copy(begin, end, done)
    return copy_in_room


def _parallel(copy: Callable[[int, int, Callable[[int], None]], None], begin: int, size: int,
              progress: Callable[[int], None], turn: Callable[[], None], inline: bool) -> None:
    jobs: queue.Queue[tuple[int, int]] = queue.Queue()
    for start in range(begin, size, CHUNK):
        jobs.put((start, min(size, start + CHUNK)))
    lock = threading.Lock()
    errors: list[BaseException] = []
    total = [begin]

    def done(n: int) -> None:
        with lock:
            total[0] += n
            progress(total[0])

    def worker() -> None:
        while not errors:
            try:
                start, end = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                turn()  # may wait (giving way), raise (aborted), or set this thread's I/O class
                copy(start, end, done)
            except BaseException as e:  # noqa: BLE001 - handed to the filling thread
                errors.append(e)

    if inline and jobs.qsize() <= 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, name="hearth-fill", daemon=True)
                   for _ in range(min(FILL_THREADS, jobs.qsize()))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def _open_direct(source: SourceId) -> int:
    """An O_DIRECT descriptor, or -1 where the OS or the file system has none (tmpfs, some FUSE mounts)."""
    if not hasattr(os, "O_DIRECT"):
        return -1
    try:
        return _open_source(source, os.O_DIRECT)
    except SourceChanged:
        raise
    except OSError:
        return -1


def _cached_first(residency: Residency, cached: Callable[[int, int, Callable[[int], None]], None],
                  direct: Callable[[int, int, Callable[[int], None]], None], counted: list[int]
                  ) -> Callable[[int, int, Callable[[int], None]], None]:
    """Copy a range the page cache mostly holds from there, any other with O_DIRECT; count the former."""
    lock = threading.Lock()

    def copy(begin: int, end: int, done: Callable[[int], None]) -> None:
        if residency.mostly_cached(begin, end):
            cached(begin, end, done)
            with lock:
                counted[0] += end - begin
        else:
            direct(begin, end, done)
    return copy


def _copy(source: SourceId, src_fd: int, dst_fd: int, dst_path: Path, room: Room,
          progress: Callable[[int], None], turn: Callable[[], None], inline: bool) -> int:
    """Fill the segment from the source: O_DIRECT where the source's file system allows it (page-aligned
    bulk; the unaligned tail through sendfile), sendfile everywhere else and for the ranges the page cache
    holds already (page_cache.py); each range's room is allocated right before it is written. Returns the
    bytes copied through the page cache."""
    size = source.size
    aligned = size - size % DIRECT_ALIGN
    sendfile = _in_room(room, _sendfile_ranges(src_fd, dst_path))
    direct_fd = _open_direct(source) if aligned else -1
    if direct_fd < 0:
        _parallel(sendfile, 0, size, progress, turn, inline)
        return size
    from_cache = [size - aligned]
    try:
        with mmap.mmap(dst_fd, size) as mm, memoryview(mm) as view:
            direct = _in_room(room, _direct_ranges(direct_fd, view))
            try:
                _parallel(_cached_first(Residency.of(src_fd, aligned), sendfile, direct, from_cache),
                          0, aligned, progress, turn, inline)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                log.info("O_DIRECT reads refused for %s; filling through the page cache", source.path)
                from_cache[0], aligned = size, 0
        _parallel(sendfile, aligned, size, progress, turn, inline)
    finally:
        os.close(direct_fd)
    return from_cache[0]


def _no_turn() -> None:
    pass


@dataclass(frozen=True)
class Filled:
    """A segment just published: its read-only descriptor, its header, and how many of its bytes were
    copied from the page cache rather than read from the disk (the fill's log line and ready event)."""

    fd: int
    header: Header
    from_page_cache: int


def fill(source: SourceId, progress: Callable[[int], None] = lambda n: None,
         turn: Callable[[], None] = _no_turn, inline: bool = False) -> Filled:
    """Copy `source` into a new segment and publish it.

    `turn` runs in each copy thread before each range (fills.py: priorities and aborts); `inline` copies
    a file of one range (a LoRA, an embedding) in this thread, with no copy thread to hand it to (under
    load each hand-over waits for a CPU), for a fill whose `turn` leaves this thread as it found it.
    Raises ShmFull when the tmpfs cannot hold it, SourceChanged when the file changed under the fill,
    SourceUnreadable when reading it fails, BadHeader when the bytes are not a valid safetensors file, and
    what `turn` raises. No final name is ever left half-filled.
    """
    key = source.key
    _not_theirs(key, source)
    part = part_path(key)
    src = _open_source(source)
    try:
        dst = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            room = Room(dst, source.size, source.path)
            try:
                from_cache = _copy(source, src, dst, part, room, progress, turn, inline)
            except OSError as e:  # EIO from a failing disk, a FUSE or network file system that went wrong
                if e.errno in (errno.ENOSPC, errno.EFBIG):
                    raise ShmFull(f"{shm_dir()} ran out of room while {source.path} was copied there") from None
                raise SourceUnreadable(f"{source.path} could not be read ({e.strerror})") from None
            finally:
                room.close()
            header = read_header(dst, source.path)
            # The inode read from, not the name: a rename meanwhile does not change the bytes we copied.
            after = SourceId.of(source.path, os.fstat(src))
            if (mismatch := source.mismatch(after)) is not None:
                raise SourceChanged(f"{source.path} changed ({mismatch}) while it was being read")
            try:
                os.rename(part, segment_path(key))
            except PermissionError:  # planted since the check above, in a sticky folder
                raise NotAllowed(_planted(key, source, "unknown")) from None
        except BaseException:
            os.close(dst)
            _unlink_quietly(part)
            raise
        # RAM should hold one copy of the model, not the segment plus the file's page cache.
        os.posix_fadvise(src, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(src)
    ro = os.open(f"/proc/self/fd/{dst}", os.O_RDONLY)  # the inode just published, whatever the name holds now
    os.close(dst)
    return Filled(ro, header, from_cache)


def open_existing(key: str, source: SourceId) -> tuple[int, Header]:
    """Re-adopt a segment a previous daemon left, after checking its size and header."""
    fd = os.open(segment_path(key), os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_size != source.size:
            raise SourceChanged(f"segment {key} has size {st.st_size}, its source {source.size}")
        return fd, read_header(fd, source.path)
    except BaseException:
        os.close(fd)
        raise


def list_own() -> tuple[list[str], list[Path]]:
    """(keys of final segments, paths of leftover .part files) of this user in the tmpfs."""
    keys, parts = [], []
    try:
        names = os.listdir(shm_dir())
    except FileNotFoundError:
        return [], []
    for name in names:
        final = name.startswith(prefix())
        if not final and not (name.startswith("." + prefix()) and name.endswith(".part")):
            continue
        try:
            st = os.lstat(shm_dir() / name)
        except FileNotFoundError:
            continue
        # /dev/shm is shared: a file another user planted under our name is not ours to adopt, nor (in a
        # sticky folder) ours to remove; trying would stop the daemon's start with a PermissionError.
        if st.st_uid != os.getuid() or not stat.S_ISREG(st.st_mode):
            continue
        if final:
            keys.append(name[len(prefix()):])
        else:
            parts.append(shm_dir() / name)
    return keys, parts


def unlink(key: str) -> None:
    _unlink_quietly(segment_path(key))


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

