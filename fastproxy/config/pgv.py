"""Envoy's protoc-gen-validate constraints, read from the field options of the xDS messages.

`check(message, path, errors)` applies the `(validate.rules)` and `(validate.required)` annotations
of one message's own fields (not recursively: the caller walks nested messages).  The common rule
kinds are covered: required messages and oneofs, string lengths/affixes/patterns/header-safe
characters, numeric and duration bounds, enum `defined_only`, repeated item counts and item rules.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from google.protobuf.descriptor import FieldDescriptor as FD

from validate import validate_pb2

from .errors import Errors, join

_WRAPPERS = {
    "google.protobuf.UInt32Value", "google.protobuf.UInt64Value", "google.protobuf.Int32Value",
    "google.protobuf.Int64Value", "google.protobuf.DoubleValue", "google.protobuf.FloatValue",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
}
_NUMERIC_KINDS = {
    "float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64",
}
# Lax (strict: false) forms of the well-known header regexes: no NUL, CR or LF.
_LAX_HEADER = re.compile(r"^[^\x00\n\r]*$")
_STRICT_HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$")
_STRICT_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0A-\x1F\x7F]*$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_pattern_cache: dict[str, Any] = {}


def _rules_of(field) -> Any:
    opts = field.GetOptions()
    if opts.HasExtension(validate_pb2.rules):
        return opts.Extensions[validate_pb2.rules]
    return None


def _fmt_duration(d) -> str:
    total = d.seconds + d.nanos / 1e9
    return f"{total:g}s"


def _dur_ns(d) -> int:
    return d.seconds * 1_000_000_000 + d.nanos


def check(msg, path: str, errors: Errors) -> None:
    desc = msg.DESCRIPTOR
    for oneof in desc.oneofs:
        opts = oneof.GetOptions()
        if opts.HasExtension(validate_pb2.required) and opts.Extensions[validate_pb2.required]:
            if msg.WhichOneof(oneof.name) is None:
                names = ", ".join(f.name for f in oneof.fields)
                errors.add(path or "(root)", f"one of [{names}] is required")
    for field in desc.fields:
        rules = _rules_of(field)
        if rules is None:
            continue
        fpath = join(path, field.name)
        if field.containing_oneof is not None and msg.WhichOneof(field.containing_oneof.name) != field.name:
            continue
        value = getattr(msg, field.name)
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                continue
            _check_repeated(field, rules, value, fpath, errors)
            continue
        _check_single(field, rules, msg, value, fpath, errors)


def _check_repeated(field, rules, value, fpath, errors):
    kind = rules.WhichOneof("type")
    if kind != "repeated":
        return
    r = rules.repeated
    n = len(value)
    if r.ignore_empty and n == 0:
        return
    if r.HasField("min_items") and n < r.min_items:
        errors.add(fpath, f"value must contain at least {r.min_items} item(s)")
    if r.HasField("max_items") and n > r.max_items:
        errors.add(fpath, f"value must contain no more than {r.max_items} item(s)")
    if r.unique and field.message_type is None and len(set(value)) != n:
        errors.add(fpath, "repeated value must contain unique items")
    if r.HasField("items"):
        for i, item in enumerate(value):
            _check_value(field, r.items, item, True, f"{fpath}[{i}]", errors)


def _check_single(field, rules, msg, value, fpath, errors):
    present = True
    if field.type == FD.TYPE_MESSAGE:
        present = msg.HasField(field.name)
    _check_value(field, rules, value, present, fpath, errors)


def _check_value(field, rules, value, present, fpath, errors):
    if rules.HasField("message"):
        if rules.message.required and not present:
            errors.add(fpath, "value is required")
    kind = rules.WhichOneof("type")
    if kind is None or kind == "repeated" or kind == "map" or kind == "any" or kind == "timestamp":
        return
    if field.type == FD.TYPE_MESSAGE:
        if not present:
            if kind == "duration" and rules.duration.required:
                errors.add(fpath, "value is required")
            return
        if field.message_type.full_name in _WRAPPERS:
            value = value.value
    if kind == "string":
        _check_string(rules.string, value, fpath, errors)
    elif kind in _NUMERIC_KINDS:
        _check_number(getattr(rules, kind), value, fpath, errors)
    elif kind == "enum":
        r = rules.enum
        if r.defined_only and field.enum_type is not None and value not in field.enum_type.values_by_number:
            errors.add(fpath, "value must be one of the defined enum values")
        if r.HasField("const") and value != r.const:
            errors.add(fpath, f"value must equal {r.const}")
        if len(getattr(r, "in")) and value not in getattr(r, "in"):
            errors.add(fpath, "value must be in list")
        if value in r.not_in:
            errors.add(fpath, "value must not be in list")
    elif kind == "duration":
        _check_duration(rules.duration, value, fpath, errors)
    elif kind == "bool":
        if rules.bool.HasField("const") and value != rules.bool.const:
            errors.add(fpath, f"value must equal {str(rules.bool.const).lower()}")
    elif kind == "bytes":
        r = rules.bytes
        if r.ignore_empty and not value:
            return
        if r.HasField("min_len") and len(value) < r.min_len:
            errors.add(fpath, f"value length must be at least {r.min_len} bytes")
        if r.HasField("max_len") and len(value) > r.max_len:
            errors.add(fpath, f"value length must be at most {r.max_len} bytes")


def _check_string(r, value: str, fpath, errors):
    if r.ignore_empty and value == "":
        return
    n = len(value)
    nbytes = len(value.encode("utf-8"))
    if r.HasField("const") and value != r.const:
        errors.add(fpath, f"value must equal {r.const!r}")
    if r.HasField("len") and n != r.len:
        errors.add(fpath, f"value length must be {r.len} characters")
    if r.HasField("min_len") and n < r.min_len:
        errors.add(fpath, f"value length must be at least {r.min_len} characters")
    if r.HasField("max_len") and n > r.max_len:
        errors.add(fpath, f"value length must be at most {r.max_len} characters")
    if r.HasField("min_bytes") and nbytes < r.min_bytes:
        errors.add(fpath, f"value length must be at least {r.min_bytes} bytes")
    if r.HasField("max_bytes") and nbytes > r.max_bytes:
        errors.add(fpath, f"value length must be at most {r.max_bytes} bytes")
    if r.HasField("prefix") and not value.startswith(r.prefix):
        errors.add(fpath, f"value does not have prefix {r.prefix!r}")
    if r.HasField("suffix") and not value.endswith(r.suffix):
        errors.add(fpath, f"value does not have suffix {r.suffix!r}")
    if r.HasField("contains") and r.contains not in value:
        errors.add(fpath, f"value does not contain substring {r.contains!r}")
    if r.HasField("not_contains") and r.not_contains in value:
        errors.add(fpath, f"value contains substring {r.not_contains!r}")
    allowed = getattr(r, "in")
    if len(allowed) and value not in allowed:
        errors.add(fpath, "value must be in list")
    if value in r.not_in:
        errors.add(fpath, "value must not be in list")
    if r.HasField("pattern"):
        pat = _pattern_cache.get(r.pattern)
        if pat is None:
            try:
                pat = re.compile(r.pattern)
            except re.error:
                pat = False
            _pattern_cache[r.pattern] = pat
        if pat and not pat.search(value):
            errors.add(fpath, f"value does not match regex pattern {r.pattern!r}")
    wk = r.WhichOneof("well_known")
    if wk == "well_known_regex":
        strict = r.strict if r.HasField("strict") else True
        if r.well_known_regex == validate_pb2.HTTP_HEADER_NAME:
            ok = (_STRICT_HEADER_NAME if strict else _LAX_HEADER).match(value)
            if not ok:
                errors.add(fpath, "value does not match regex pattern for a header name")
        elif r.well_known_regex == validate_pb2.HTTP_HEADER_VALUE:
            ok = (_STRICT_HEADER_VALUE if strict else _LAX_HEADER).match(value)
            if not ok:
                errors.add(fpath, "value does not match regex pattern for a header value")
    elif wk in ("ip", "ipv4", "ipv6") and getattr(r, wk):
        try:
            addr = ipaddress.ip_address(value)
            if (wk == "ipv4" and addr.version != 4) or (wk == "ipv6" and addr.version != 6):
                raise ValueError
        except ValueError:
            errors.add(fpath, f"value must be a valid {wk.upper() if wk != 'ip' else 'IP'} address")
    elif wk == "hostname" and r.hostname and not _HOSTNAME.match(value):
        errors.add(fpath, "value must be a valid hostname")


def _check_number(r, value, fpath, errors):
    if getattr(r, "ignore_empty", False) and value == 0:
        return
    if r.HasField("const") and value != r.const:
        errors.add(fpath, f"value must equal {r.const}")
    lo = hi = None
    if r.HasField("gt"):
        lo = ("gt", r.gt)
    elif r.HasField("gte"):
        lo = ("gte", r.gte)
    if r.HasField("lt"):
        hi = ("lt", r.lt)
    elif r.HasField("lte"):
        hi = ("lte", r.lte)
    bad_lo = lo is not None and (value <= lo[1] if lo[0] == "gt" else value < lo[1])
    bad_hi = hi is not None and (value >= hi[1] if hi[0] == "lt" else value > hi[1])
    if lo is not None and hi is not None and (bad_lo or bad_hi):
        left = "(" if lo[0] == "gt" else "["
        right = ")" if hi[0] == "lt" else "]"
        errors.add(fpath, f"value must be inside range {left}{lo[1]}, {hi[1]}{right}")
    elif bad_lo:
        errors.add(fpath, f"value must be greater than {'' if lo[0] == 'gt' else 'or equal to '}{lo[1]}")
    elif bad_hi:
        errors.add(fpath, f"value must be less than {'' if hi[0] == 'lt' else 'or equal to '}{hi[1]}")
    allowed = getattr(r, "in")
    if len(allowed) and value not in allowed:
        errors.add(fpath, "value must be in list")
    if value in r.not_in:
        errors.add(fpath, "value must not be in list")


def _check_duration(r, d, fpath, errors):
    ns = _dur_ns(d)
    if r.HasField("const") and ns != _dur_ns(r.const):
        errors.add(fpath, f"value must equal {_fmt_duration(r.const)}")
    if r.HasField("gt") and not ns > _dur_ns(r.gt):
        errors.add(fpath, f"value must be greater than {_fmt_duration(r.gt)}")
    if r.HasField("gte") and not ns >= _dur_ns(r.gte):
        errors.add(fpath, f"value must be greater than or equal to {_fmt_duration(r.gte)}")
    if r.HasField("lt") and not ns < _dur_ns(r.lt):
        errors.add(fpath, f"value must be less than {_fmt_duration(r.lt)}")
    if r.HasField("lte") and not ns <= _dur_ns(r.lte):
        errors.add(fpath, f"value must be less than or equal to {_fmt_duration(r.lte)}")
