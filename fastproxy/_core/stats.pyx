"""The workers' side of the shared-memory stats block: a raw pointer to this process's slot.

Counters are bumped with plain stores (`slot.values[base + MEMBER] += 1`); the slot has a single
writer, and the admin in the main process sums all slots.
"""
from libc.stdint cimport int64_t, uint32_t, uint64_t
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from posix.fcntl cimport open as c_open, O_RDWR
from posix.unistd cimport close as c_close

from fastproxy.stats.shared import HEADER_SIZE, MAGIC, VERSION
from fastproxy.stats.names import GAUGE

cdef struct shm_header:
    uint32_t magic
    uint32_t version
    uint64_t num_slots
    uint64_t num_stats
    uint64_t reserved


cdef class StatsSlot:
    def __cinit__(self):
        self.values = NULL
        self.mapping = NULL

    def __init__(self, str path, int slot, layout):
        cdef bytes bpath = path.encode()
        cdef int fd = c_open(bpath, O_RDWR)
        if fd < 0:
            raise OSError("cannot open stats block %s" % path)
        cdef size_t header_size = HEADER_SIZE
        cdef size_t nstats = layout.size
        cdef size_t size = header_size + (slot + 1) * nstats * 8
        cdef void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        c_close(fd)
        if m == MAP_FAILED:
            raise OSError("cannot map stats block %s" % path)
        self.mapping = m
        self.mapping_size = size
        cdef shm_header *h = <shm_header *>m
        if h.magic != MAGIC or h.version != VERSION or h.num_stats != <uint64_t>layout.size \
                or <uint64_t>slot >= h.num_slots:
            raise ValueError("stats block %s does not match this configuration" % path)
        self.slot = slot
        self.num_stats = layout.size
        self.values = <int64_t *>(<char *>m + header_size + slot * nstats * 8)
        # Gauges describe live state of this process; a restarted worker starts from zero.
        for i, kind in enumerate(layout.kinds):
            if kind == GAUGE:
                self.values[i] = 0

    def __dealloc__(self):
        if self.mapping != NULL:
            munmap(self.mapping, self.mapping_size)
            self.mapping = NULL
            self.values = NULL

    def get(self, Py_ssize_t index):
        if index < 0 or index >= self.num_stats:
            raise IndexError(index)
        return self.values[index]

    def add(self, Py_ssize_t index, int64_t delta=1):
        if index < 0 or index >= self.num_stats:
            raise IndexError(index)
        self.values[index] += delta
