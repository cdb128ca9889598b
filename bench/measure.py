"""Process-tree CPU and memory from /proc, and small statistics helpers."""
from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Dict, Iterable, List, Optional, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(")") + 2:].split()


def tree_pids(root: int) -> List[int]:
    """root and all its descendants (scans /proc once)."""
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return out


def cpu_ticks(pids: Iterable[int]) -> Dict[int, int]:
    """{pid: utime+stime in clock ticks}."""
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 (0-based here).
            out[pid] = int(fields[11]) + int(fields[12])
    return out


class TreeCpu:
    """CPU seconds a process tree used between start() and stop()."""

    def __init__(self, root: int):
        self.root = root
        self.before: Dict[int, int] = {}

    def start(self) -> None:
        self.before = cpu_ticks(tree_pids(self.root))

    def stop(self) -> float:
        after = cpu_ticks(tree_pids(self.root))
        # Processes born during the segment count from zero; ones that died are lost.
        ticks = sum(t - self.before.get(pid, 0) for pid, t in after.items())
        return max(ticks, 0) / CLK_TCK


def rss_kb(pids: Iterable[int]) -> int:
    """Sum of VmRSS over pids, in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def tree_rss_mb(root: int) -> float:
    return rss_kb(tree_pids(root)) / 1024.0


class PeakRss(threading.Thread):
    """Samples a process tree's summed VmRSS until stopped; keeps the peak (MB)."""

    def __init__(self, root: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_kb = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        pids, rescan = tree_pids(self.root), time.monotonic() + 0.5
        while not self._stop_evt.is_set():
            if time.monotonic() > rescan:
                pids, rescan = tree_pids(self.root), time.monotonic() + 0.5
            self.peak_kb = max(self.peak_kb, rss_kb(pids))
            self._stop_evt.wait(self.interval)

    def stop(self) -> float:
        self._stop_evt.set()
        self.join()
        self.peak_kb = max(self.peak_kb, rss_kb(tree_pids(self.root)))
        return self.peak_kb / 1024.0


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children (the load tools, once they have exited)."""
    ru = os.times()
    return ru.children_user + ru.children_system


def median(values: Sequence[float]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


# Percentiles stored for latency distribution plots.
CURVE_PCTS = (0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100)
