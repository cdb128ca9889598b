"""Envoy v3 bootstrap -> fastproxy's compiled configuration model.

Public API:
  load_bootstrap(path) -> model.Bootstrap   read, check and compile a YAML/JSON bootstrap file
  load_dict(data) -> model.Bootstrap        the same from an already-parsed dict
  validate(path) -> list[str]               every problem found ("path: message"), [] when valid
  ConfigError                               raised with `.errors`, the list of all problems
"""
from . import model
from .errors import ConfigError
from .pipeline import load_bootstrap, load_dict, validate

__all__ = ["ConfigError", "load_bootstrap", "load_dict", "model", "validate"]
