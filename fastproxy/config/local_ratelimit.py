"""envoy.filters.http.local_ratelimit (LocalRateLimit) -> the compiled model.

The filter sits in a connection manager's http_filters (before the router) and may be overridden
per virtual host or route through typed_per_filter_config.  Each compiled config owns one token
bucket; configs sharing a stat_prefix share their counters, as Envoy's stats scope does.  Buckets
and counter sets are numbered over the whole bootstrap by `assign_slots` so that every process
finds them at the same place in the shared-memory block (fastproxy.stats.limits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from . import model
from .common import duration_ms, enum_name, wrapped
from .errors import Errors, join
from .headers import header_value_option

# The filter's proto type.  Kept as a name so that importing this module (the stats layout does,
# in every worker) does not load the schema; the loader registers the type itself.
TYPE_NAME = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
FILTER_NAME = "envoy.filters.http.local_ratelimit"

# envoy.type.v3.FractionalPercent.DenominatorType
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


@dataclass
class Descriptor:
    """One LocalRateLimitDescriptor: the (key, value) entries a request descriptor must equal
    exactly (same entries, same order) and its own token bucket."""
    entries: tuple[tuple[str, str], ...]
    max_tokens: int
    tokens_per_fill: int
    fill_interval_ms: int
    bucket: int = -1  # index of its token bucket in the shared block

    @property
    def fill_rate(self) -> float:
        return self.tokens_per_fill * 1000.0 / self.fill_interval_ms if self.fill_interval_ms else 0.0


@dataclass
class RateLimitAction:
    """One route.v3.RateLimit.Action: kind is generic_key | request_headers | remote_address."""
    kind: str
    key: str
    value: str = ""  # generic_key: the descriptor value; request_headers: lower-case header name
    skip_if_absent: bool = False


@dataclass
class LocalRateLimit:
    stat_prefix: str
    has_token_bucket: bool = False
    max_tokens: int = 0
    tokens_per_fill: int = 1
    fill_interval_ms: int = 0
    # filter_enabled / filter_enforced as (numerator, denominator); None = not set, which Envoy
    # reads as "never" (a filter without filter_enabled counts and limits nothing)
    enabled: Optional[tuple[int, int]] = None
    enforced: Optional[tuple[int, int]] = None
    status: int = 429
    response_headers_to_add: list[model.HeaderValueOption] = field(default_factory=list)
    x_ratelimit_headers: bool = False  # enable_x_ratelimit_headers: DRAFT_VERSION_03
    # descriptors: the buckets of the request descriptors that the route's rate_limits produce
    descriptors: list[Descriptor] = field(default_factory=list)
    always_consume_default: bool = True  # always_consume_default_token_bucket
    bucket: int = -1  # index of its token bucket in the shared block
    counters: int = -1  # index of its stat_prefix's counter set in the shared block

    @property
    def fill_rate(self) -> float:
        """Tokens per second."""
        return self.tokens_per_fill * 1000.0 / self.fill_interval_ms if self.fill_interval_ms else 0.0


def _fraction(msg, name: str) -> Optional[tuple[int, int]]:
    if not msg.HasField(name):
        return None
    rfp = getattr(msg, name)
    # No runtime layer: the runtime key never overrides the default value.
    dv = rfp.default_value
    return (dv.numerator, _DENOMINATORS.get(dv.denominator, 100))


def local_ratelimit(cfg, path: str, errors: Errors, per_route: bool) -> Optional[LocalRateLimit]:
    """Compile one LocalRateLimit message (the filter's typed_config or a per-route override)."""
    out = LocalRateLimit(stat_prefix=cfg.stat_prefix)
    if cfg.HasField("token_bucket"):
        tb = cfg.token_bucket
        out.has_token_bucket = True
        out.max_tokens = tb.max_tokens
        out.tokens_per_fill = wrapped(tb, "tokens_per_fill", 1)
        out.fill_interval_ms = duration_ms(tb.fill_interval)
        if 0 < out.fill_interval_ms < 50:
            errors.add(join(join(path, "token_bucket"), "fill_interval"),
                       "local rate limit token bucket fill timer must be >= 50ms")
    elif per_route:
        errors.add(path, "local rate limit token bucket must be set for per filter configs")
    out.enabled = _fraction(cfg, "filter_enabled")
    out.enforced = _fraction(cfg, "filter_enforced")
    if cfg.HasField("status"):
        code = cfg.status.code
        out.status = code if code >= 400 else 429  # Envoy's toErrorCode
    for i, hvo in enumerate(cfg.response_headers_to_add):
        out.response_headers_to_add.append(
            header_value_option(hvo, f"{join(path, 'response_headers_to_add')}[{i}]", errors))
    out.x_ratelimit_headers = enum_name(cfg, "enable_x_ratelimit_headers") == "DRAFT_VERSION_03"
    for i, d in enumerate(cfg.descriptors):
        desc = descriptor(d, f"{join(path, 'descriptors')}[{i}]", errors)
        if desc is None:
            continue
        if any(o.entries == desc.entries for o in out.descriptors):
            errors.add(f"{join(path, 'descriptors')}[{i}]", "duplicate descriptor in the local "
                       "rate descriptor: " + ", ".join(f"{k}={v}" for k, v in desc.entries))
        out.descriptors.append(desc)
    if cfg.descriptors and out.x_ratelimit_headers:
        errors.add(join(path, "enable_x_ratelimit_headers"),
                   "not supported together with descriptors")
    if cfg.HasField("always_consume_default_token_bucket"):
        out.always_consume_default = cfg.always_consume_default_token_bucket.value
    if cfg.local_rate_limit_per_downstream_connection:
        errors.add(join(path, "local_rate_limit_per_downstream_connection"),
                   "only false (buckets shared by all connections) is supported")
    if cfg.rate_limited_as_resource_exhausted:
        errors.add(join(path, "rate_limited_as_resource_exhausted"), "not supported")
    return out


def descriptor(d, path: str, errors: Errors) -> Optional[Descriptor]:
    entries = []
    for j, e in enumerate(d.entries):
        if not e.value:
            errors.add(f"{join(path, 'entries')}[{j}].value",
                       "an empty value (any value of the key) is not supported")
            return None
        entries.append((e.key, e.value))
    tb = d.token_bucket
    out = Descriptor(tuple(entries), tb.max_tokens, wrapped(tb, "tokens_per_fill", 1),
                     duration_ms(tb.fill_interval))
    if 0 < out.fill_interval_ms < 50:
        errors.add(join(join(path, "token_bucket"), "fill_interval"),
                   "local rate limit token bucket fill timer must be >= 50ms")
    return out


def rate_limits(msg, path: str, errors: Errors) -> list[list[RateLimitAction]]:
    """A RouteAction's or VirtualHost's rate_limits: per entry, its actions (stage 0 only)."""
    out = []
    for i, rl in enumerate(msg.rate_limits):
        rpath = f"{join(path, 'rate_limits')}[{i}]"
        actions = []
        for j, a in enumerate(rl.actions):
            kind = a.WhichOneof("action_specifier")
            if kind == "generic_key":
                actions.append(RateLimitAction("generic_key",
                                               a.generic_key.descriptor_key or "generic_key",
                                               a.generic_key.descriptor_value))
            elif kind == "request_headers":
                rh = a.request_headers
                actions.append(RateLimitAction("request_headers", rh.descriptor_key,
                                               rh.header_name.lower(), rh.skip_if_absent))
            elif kind == "remote_address":
                actions.append(RateLimitAction("remote_address", "remote_address"))
            else:  # the others are refused by the support walk
                actions = None
                break
        if actions is not None:
            out.append(actions)
    return out


def per_filter_config(msg, path: str, errors: Errors) -> dict:
    """A route's or virtual host's typed_per_filter_config: {filter name: LocalRateLimit}.
    Overrides of other filters' types are refused by the support walk."""
    from .loader import snake
    from .support import unpack_any

    out = {}
    for name in sorted(msg.typed_per_filter_config):
        inner = unpack_any(msg.typed_per_filter_config[name])
        if inner is None or inner.DESCRIPTOR.full_name != TYPE_NAME:
            continue  # reported by the support walk
        cfg = local_ratelimit(inner, f"{join(path, 'typed_per_filter_config')}.{snake(name)}",
                              errors, per_route=True)
        if cfg is not None:
            out[name] = cfg
    return out


def http_filter(flt, inner, path: str, errors: Errors):
    """(filter name, LocalRateLimit) for an http_filters entry of this type."""
    return flt.name, local_ratelimit(inner, path, errors, per_route=False)


def _configs(bootstrap):
    for listener in bootstrap.listeners:
        hcm = listener.hcm
        if getattr(hcm, "local_ratelimit", None) is not None:
            yield hcm.local_ratelimit
        for vh in hcm.route_config.virtual_hosts:
            for cfg in getattr(vh, "per_filter_config", {}).values():
                yield cfg
            for r in vh.routes:
                for cfg in getattr(r, "per_filter_config", {}).values():
                    yield cfg


def assign_slots(bootstrap) -> None:
    """Number every config's bucket and every distinct stat_prefix's counters, in bootstrap order;
    the descriptors' buckets follow the configs' ones."""
    prefixes: dict[str, int] = {}
    configs = list(_configs(bootstrap))
    for n, cfg in enumerate(configs):
        cfg.bucket = n
        cfg.counters = prefixes.setdefault(cfg.stat_prefix, len(prefixes))
    n = len(configs)
    for cfg in configs:
        for d in cfg.descriptors:
            d.bucket = n
            n += 1


def stat_prefixes(bootstrap) -> list[str]:
    """The distinct stat_prefixes, in counter-set order."""
    seen: dict[str, None] = {}
    for cfg in _configs(bootstrap):
        seen.setdefault(cfg.stat_prefix, None)
    return list(seen)


def num_buckets(bootstrap) -> int:
    return sum(1 + len(cfg.descriptors) for cfg in _configs(bootstrap))
