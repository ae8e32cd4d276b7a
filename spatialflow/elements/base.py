"""What every element shares: a name, its data, its transforms to coordinate systems."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from spatialflow.errors import ValidationError
from spatialflow.transforms.base import Identity, Transform

__all__ = ["Element", "check_name"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_name(name: Any, kind: str = "element") -> str:
    """Validate an element name: letters, digits, ``_-.``; not starting with ``__``."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{kind} name must be a non-empty string, got {name!r}")
    if name in (".", ".."):
        raise ValidationError(f"{kind} name {name!r} is not allowed")
    if name.startswith("__"):
        raise ValidationError(f"{kind} name {name!r} must not start with '__'")
    if not _NAME_RE.match(name):
        raise ValidationError(
            f"{kind} name {name!r} may contain only letters, digits, '_', '-' and '.'"
        )
    return name


class Element(ABC):
    """Base class of Image, Labels, Points, Shapes and Table."""

    kind: ClassVar[str]  # the Dataset attribute it lives in: images, labels, points, shapes, tables

    def __init__(
        self, *, transforms: Mapping[str, Transform] | None = None, name: str | None = None
    ) -> None:
        self.name = check_name(name, type(self).__name__) if name is not None else None
        self.transforms: dict[str, Transform] = self._check_transforms(transforms)

    def _check_transforms(self, transforms: Mapping[str, Transform] | None) -> dict[str, Transform]:
        if transforms is None:
            return {"global": Identity()}
        if not isinstance(transforms, Mapping):
            raise self.error(
                "transforms",
                f"must map coordinate system names to transforms, got {type(transforms).__name__}",
            )
        out: dict[str, Transform] = {}
        for cs, t in transforms.items():
            if not isinstance(cs, str) or not cs:
                raise self.error(
                    "transforms", f"coordinate system names must be non-empty strings, got {cs!r}"
                )
            if not isinstance(t, Transform):
                raise self.error("transforms", f"{t!r} (to {cs!r}) is not a Transform")
            out[cs] = t
        return out

    @property
    def label(self) -> str:
        return f"{type(self).__name__} {self.name!r}" if self.name else type(self).__name__

    def error(self, field: str, message: str) -> ValidationError:
        return ValidationError(f"{self.label}: {field}: {message}")

    @property
    @abstractmethod
    def axes(self) -> tuple[str, ...]:
        """Spatial axes in the element's own order."""

    @abstractmethod
    def summary(self) -> str:
        """A one-line description (size, dtype, partitions) for reprs."""

    def __repr__(self) -> str:
        cs = ", ".join(sorted(self.transforms)) or "-"
        return f"{self.label}: {self.summary()} [coordinate systems: {cs}]"
