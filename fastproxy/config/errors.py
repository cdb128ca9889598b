"""Configuration errors: `ConfigError` carries every problem found, each prefixed by its path."""
from __future__ import annotations

from typing import Iterable


class ConfigError(Exception):
    """A configuration was refused.  `errors` lists every problem as "path: message"."""

    def __init__(self, errors: Iterable[str] | str):
        if isinstance(errors, str):
            errors = [errors]
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))


class Errors:
    """Collects "path: message" strings in order, dropping exact duplicates."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._seen: set[str] = set()

    def add(self, path: str, message: str) -> None:
        text = f"{path}: {message}" if path else message
        if text not in self._seen:
            self._seen.add(text)
            self.items.append(text)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def join(path: str, name: str) -> str:
    """Path of field `name` inside the message at `path`."""
    return f"{path}.{name}" if path else name
