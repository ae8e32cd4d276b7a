"""The reader protocol: one class per on-disk format, in the spirit of xarray's backends.

A reader says cheaply whether it recognises what is at a URL (:meth:`Reader.guess_can_open`,
metadata or marker files only, never the data) and opens it as a lazy Dataset
(:meth:`Reader.open`). Readers are found in one registry (``registry.py``): the built-in ones
and any third-party class registered under the ``spatialflow.readers`` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from spatialflow.dataset import Dataset

__all__ = ["Reader"]


class Reader(ABC):
    """One storage format: recognise it at a URL, open it lazily as a Dataset."""

    #: the name users pass as ``sf.read(url, reader=name)``
    name: ClassVar[str]
    #: one line for error messages and ``spatialflow --help``: what this reader opens
    description: ClassVar[str] = ""

    @abstractmethod
    def guess_can_open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None
    ) -> bool:
        """True if the store or folder at ``url`` looks like this format (cheap: markers only)."""

    @abstractmethod
    def open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> Dataset:
        """The Dataset at ``url``, lazily (metadata read, data left on disk)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
