"""The whole pipeline: file -> dict -> Bootstrap proto -> support walk -> model, and `validate`
for `--mode validate` (every problem as a "path: message" string)."""
from __future__ import annotations

from . import loader
from .compile import compile_bootstrap
from .errors import ConfigError, Errors
from .support import check_supported
from . import model


def check_proto(bs, unknown_any: dict[str, str]) -> tuple[model.Bootstrap, Errors]:
    """Support walk + compile of a parsed Bootstrap; returns the model and the errors found."""
    errors = Errors()
    check_supported(bs, unknown_any, errors)
    try:
        compiled = compile_bootstrap(bs, errors)
    except Exception as exc:  # noqa: BLE001 - only tolerated when the config is already invalid
        if not errors:
            raise
        errors.add("", f"(further checks stopped: {exc!r})")
        compiled = model.Bootstrap()
    return compiled, errors


def load_dict(data: dict) -> model.Bootstrap:
    """A bootstrap given as a dict (as parsed from YAML/JSON) -> model; raises ConfigError."""
    bs, unknown = loader.parse_dict(data)
    compiled, errors = check_proto(bs, unknown)
    errors.raise_if_any()
    return compiled


def load_bootstrap(path: str) -> model.Bootstrap:
    """Read, check and compile a bootstrap file; raises ConfigError listing every problem."""
    return load_dict(loader.parse_text(loader.read_text(path), path))


def validate(path: str) -> list[str]:
    """Every problem with the bootstrap at `path`; an empty list means it is accepted."""
    try:
        load_bootstrap(path)
    except ConfigError as exc:
        return list(exc.errors)
    return []
