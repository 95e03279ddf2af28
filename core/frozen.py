"""Frozen values built fast, for the hot path.

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__``;
the counting step builds several values for every workspace of every batch, and at one event
per workspace that is a sizeable part of an event's cost. ``constructor(cls)`` gives a function
that takes every field positionally, in declaration order, and sets the slots through their
descriptors: an equal value in about half the time. It serves slotted classes without
``__post_init__`` only, where ``__init__`` validates nothing that could be skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def constructor(cls: type[T]) -> Callable[..., T]:
    if not is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} validates in __post_init__: use its own constructor")
    names = [f.name for f in fields(cls)]
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    for index, name in enumerate(names):
        namespace[f"set{index}"] = getattr(cls, name).__set__
    params = ", ".join(f"a{index}" for index in range(len(names)))
    body = "".join(f"    set{index}(value, a{index})\n" for index in range(len(names)))
    exec(f"def build({params}):\n    value = new(cls)\n{body}    return value\n", namespace)  # noqa: S102
    build: Callable[..., T] = namespace["build"]
    build.__qualname__ = build.__name__ = f"build_{cls.__name__}"
    build.__doc__ = f"{cls.__name__}({', '.join(names)}), every field given, positionally."
    return build
