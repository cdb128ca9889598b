"""Compiling header mutations (`*_headers_to_add/remove`) and header/query/string matchers."""
from __future__ import annotations

from typing import Optional

from . import model
from .errors import Errors, join

_APPEND_ACTIONS = {
    0: model.APPEND_IF_EXISTS_OR_ADD,
    1: model.ADD_IF_ABSENT,
    2: model.OVERWRITE_IF_EXISTS_OR_ADD,
    3: model.OVERWRITE_IF_EXISTS,
}


def literal_value(value: str, path: str, errors: Errors) -> str:
    """A header value with '%%' unescaped; any other '%' is a formatter we do not implement."""
    out = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "%":
            if i + 1 < n and value[i + 1] == "%":
                out.append("%")
                i += 2
                continue
            errors.add(path, "header formatters not supported")
            return value
        out.append(ch)
        i += 1
    return "".join(out)


def _modifiable(name: str) -> bool:
    return not (name.startswith(":") or name == "host")


def header_value_option(hvo, path: str, errors: Errors) -> model.HeaderValueOption:
    key = hvo.header.key.lower()
    if key and not _modifiable(key):
        errors.add(join(join(path, "header"), "key"), ":-prefixed or host headers may not be modified")
    value = literal_value(hvo.header.value, join(join(path, "header"), "value"), errors)
    action = _APPEND_ACTIONS.get(hvo.append_action, model.APPEND_IF_EXISTS_OR_ADD)
    if hvo.HasField("append"):
        if hvo.append_action != 0:
            errors.add(path, "Both append and append_action are set and it's not allowed")
        action = (model.APPEND_IF_EXISTS_OR_ADD if hvo.append.value
                  else model.OVERWRITE_IF_EXISTS_OR_ADD)
    return model.HeaderValueOption(key, value, action, hvo.keep_empty_value)


def mutations(msg, path: str, errors: Errors) -> model.HeaderMutations:
    """The four header-mutation fields of a route config, virtual host, route or cluster weight."""
    out = model.HeaderMutations()
    for direction in ("request", "response"):
        adds = getattr(out, f"{direction}_add")
        for i, hvo in enumerate(getattr(msg, f"{direction}_headers_to_add")):
            adds.append(header_value_option(hvo, f"{join(path, direction + '_headers_to_add')}[{i}]", errors))
        removes = getattr(out, f"{direction}_remove")
        rname = join(path, direction + "_headers_to_remove")
        for i, name in enumerate(getattr(msg, f"{direction}_headers_to_remove")):
            lname = name.lower()
            if lname and not _modifiable(lname):
                errors.add(f"{rname}[{i}]", ":-prefixed or host headers may not be removed")
            removes.append(lname)
    return out


def string_matcher(sm, path: str, errors: Errors) -> Optional[model.StringMatcher]:
    kind = sm.WhichOneof("match_pattern")
    if kind is None:
        return None  # reported by the validation rules
    if kind == "safe_regex":
        return model.StringMatcher("regex", sm.safe_regex.regex, sm.ignore_case)
    return model.StringMatcher(kind, getattr(sm, kind), sm.ignore_case)


_LEGACY = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
           "contains_match": "contains"}


def header_matcher(hm, path: str, errors: Errors) -> model.HeaderMatcher:
    kind = hm.WhichOneof("header_match_specifier")
    matcher = None
    present = None
    if kind is None:
        present = True  # Envoy: no specifier means "header is present"
    elif kind == "present_match":
        present = hm.present_match
    elif kind == "string_match":
        matcher = string_matcher(hm.string_match, join(path, "string_match"), errors)
    elif kind == "safe_regex_match":
        matcher = model.StringMatcher("regex", hm.safe_regex_match.regex)
    elif kind in _LEGACY:
        matcher = model.StringMatcher(_LEGACY[kind], getattr(hm, kind))
    else:
        errors.add(join(path, kind), "not supported")
    if matcher is None and present is None:
        present = True
    return model.HeaderMatcher(hm.name.lower(), matcher, present, hm.invert_match,
                               hm.treat_missing_header_as_empty)


def query_matcher(qm, path: str, errors: Errors) -> model.QueryParameterMatcher:
    if qm.HasField("string_match"):
        return model.QueryParameterMatcher(
            qm.name, string_matcher(qm.string_match, join(path, "string_match"), errors), False)
    # present_match, or no specifier at all: Envoy matches on presence.
    return model.QueryParameterMatcher(qm.name, None, True)

