"""One small generic registry for named implementations (methods, probes, classifiers, strategies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from lexprobe.toolkit.errors import InputError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by the `@registry.register("name")` decorator at import time."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, replace: bool = False) -> Callable[[T], T]:
        """Decorator registering an object under `name`; a second registration of a name is an error
        unless `replace` (re-running a notebook cell that registers a method)."""

        def decorate(obj: T) -> T:
            if name in self._items and not replace:
                raise InputError(f"{self.kind} '{name}' is registered twice: pass replace=True to replace it")
            self._items[name] = obj
            return obj

        return decorate

    def remove(self, name: str) -> None:
        self.get(name)  # unknown names raise with "did you mean"
        del self._items[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            hint = did_you_mean(name, self._items, quote="'")
            raise InputError(
                f"unknown {self.kind} '{name}': {hint}choose one of {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
