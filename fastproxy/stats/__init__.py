"""Stats: Envoy's stat names, their layout, and the shared-memory block the workers write."""
from .layout import StatsLayout, listener_stat_prefix
from .shared import SharedStats, shm_path

__all__ = ["StatsLayout", "SharedStats", "listener_stat_prefix", "shm_path"]
