"""Name -> function registries behind SOUP's pluggable choices (prefix strategies, refresh policies, ...)."""

from __future__ import annotations

from collections.abc import Callable


class Registry:
    """Functions registered by name for one config option.

    Args:
        kind: what is registered, in messages ("prefix strategy").
        option: the config field that selects one ("prefix_strategy").
        register_name: the public registering function, named in the error for an unknown name.
    """

    def __init__(self, kind: str, option: str, register_name: str):
        self.kind, self.option, self.register_name = kind, option, register_name
        self.entries: dict[str, Callable] = {}

    def register(self, name: str, fn: Callable | None = None, *, overwrite: bool = False, on_register=None):
        """Register ``fn`` under ``name``; usable as ``register("name")(fn)`` or as a decorator. ``on_register(name)``
        runs after each registration (for what a registry keeps beside the function)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} name must be a non-empty string, got {name!r}.")

        def decorator(function: Callable) -> Callable:
            if not callable(function):
                raise TypeError(f"{self.kind} {name!r} must be callable, got {type(function).__name__}.")
            if name in self.entries and not overwrite:
                raise ValueError(
                    f"A {self.kind} named {name!r} is already registered; pass overwrite=True to replace it."
                )
            self.entries[name] = function
            if on_register is not None:
                on_register(name)
            return function

        return decorator if fn is None else decorator(fn)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> Callable:
        """The function registered under ``name``; an unknown name fails with the list of known ones."""
        try:
            return self.entries[name]
        except KeyError:
            raise ValueError(
                f"Unknown {self.option} {name!r}. Registered: {self.names()}. Register your own with "
                f"{self.register_name}(name)."
            ) from None
