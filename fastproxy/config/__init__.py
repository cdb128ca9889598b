"""Envoy v3 bootstrap -> fastproxy's compiled configuration model.

Public API:
  load_bootstrap(path) -> model.Bootstrap   read, check and compile a YAML/JSON bootstrap file
  load_dict(data) -> model.Bootstrap        the same from an already-parsed dict
  validate(path) -> list[str]               every problem found ("path: message"), [] when valid
  ConfigError                               raised with `.errors`, the list of all problems

The loader (protobuf and Envoy's schema) is imported on first use, so a process that only needs
the compiled model (a worker) imports `fastproxy.config.model` without the schema's memory.
"""
from . import model
from .errors import ConfigError

__all__ = ["ConfigError", "load_bootstrap", "load_dict", "model", "validate"]


def __getattr__(name):
    if name in ("load_bootstrap", "load_dict", "validate"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(name)
