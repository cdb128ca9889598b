"""The shared-memory stats block: one slot of int64 values per process, summed by the admin.

File layout: a 32-byte header (magic, version, number of slots, number of stats), then
`num_slots` arrays of `num_stats` little-endian int64.  Slot 0 belongs to the main process, slot
i + 1 to worker i.  Each slot has a single writer (the owning process's C code writes plain
aligned 64-bit words), so no locks are needed; readers sum the slots.  A worker restarted into the
same slot keeps adding to the counters its predecessor left, so counters never go backwards;
its gauges are reset on attach since the connections they counted are gone.
"""
from __future__ import annotations

import mmap
import os
import struct

MAGIC = 0x46505354  # "FPST"
VERSION = 1
HEADER = struct.Struct("<IIQQQ")  # magic, version, num_slots, num_stats, reserved
HEADER_SIZE = 32


def shm_path(base_id: int | str, pid: int | None = None) -> str:
    root = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    return os.path.join(root, "fastproxy-%s-%d.stats" % (base_id, pid or os.getpid()))


class SharedStats:
    def __init__(self, path: str, fd: int, layout, num_slots: int):
        self.path = path
        self.layout = layout
        self.num_slots = num_slots
        self.num_stats = layout.size
        size = HEADER_SIZE + num_slots * self.num_stats * 8
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)
        self._values = memoryview(self._mm)[HEADER_SIZE:].cast("q")

    @classmethod
    def create(cls, path: str, num_slots: int, layout) -> "SharedStats":
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, HEADER_SIZE + num_slots * layout.size * 8)
        os.pwrite(fd, HEADER.pack(MAGIC, VERSION, num_slots, layout.size, 0), 0)
        return cls(path, fd, layout, num_slots)

    @classmethod
    def open(cls, path: str, layout) -> "SharedStats":
        fd = os.open(path, os.O_RDWR)
        magic, version, num_slots, num_stats, _ = HEADER.unpack(os.pread(fd, HEADER.size, 0))
        if magic != MAGIC or version != VERSION or num_stats != layout.size:
            os.close(fd)
            raise ValueError("stats block %s does not match this configuration" % path)
        return cls(path, fd, layout, num_slots)

    def sum(self) -> list[int]:
        n = self.num_stats
        values = self._values
        totals = list(values[0:n])
        for slot in range(1, self.num_slots):
            base = slot * n
            for i, v in enumerate(values[base:base + n]):
                totals[i] += v
        return totals

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.layout.names, self.sum()))

    def set_value(self, slot: int, name: str, value: int) -> None:
        self._values[slot * self.num_stats + self.layout.index[name]] = value

    set_gauge = set_value

    def add(self, slot: int, name: str, delta: int = 1) -> None:
        self._values[slot * self.num_stats + self.layout.index[name]] += delta

    def close(self) -> None:
        self._values.release()
        self._mm.close()

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
