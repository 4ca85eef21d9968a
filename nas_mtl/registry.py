"""Name -> factory registries, the extension points of nas_mtl (like timm's ``create_model``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories by name; ``create`` checks the keyword arguments against the factory's signature.

    Args:
        kind: what is registered ("backbone", "dataset", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: make ``factory(**kwargs)`` available as ``create(name, **kwargs)``."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def signature(self, name: str) -> inspect.Signature:
        """The keyword arguments ``create(name, ...)`` accepts (ValueError for an unknown name)."""
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return inspect.signature(self._factories[name])

    def create(self, name: str, **kwargs) -> T:
        """Build ``name``; unknown names and bad keyword arguments raise errors naming them."""
        signature = self.signature(name)
        try:
            signature.bind(**kwargs)
        except TypeError as err:
            raise TypeError(f"{self.kind} {name!r}: {err}; parameters: {list(signature.parameters)}") from None
        return self._factories[name](**kwargs)


__all__ = [
    "Registry",
]
