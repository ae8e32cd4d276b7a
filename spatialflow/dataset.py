"""Dataset: named elements of the five kinds, their coordinate systems and table links.

Names follow SpatialData: letters, digits, ``_-.``, not starting with ``__``, and unique
case-insensitively across all kinds (so a store can hold them on a case-insensitive
filesystem). Each kind is a dict-like attribute (``ds.images``, ``ds.points`` ...); assigning to
one validates the name and the element's kind and sets the element's ``name``.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from spatialflow.elements import KINDS
from spatialflow.elements.base import Element, check_name
from spatialflow.elements.links import LinkGraph
from spatialflow.elements.table import Table
from spatialflow.errors import ValidationError
from spatialflow.transforms.graph import TransformGraph

if TYPE_CHECKING:
    from spatialflow.elements.points import Points
    from spatialflow.elements.raster import Image, Labels
    from spatialflow.elements.shapes import Shapes

__all__ = ["Dataset"]


class ElementMap(MutableMapping[str, Any]):
    """The elements of one kind in a Dataset."""

    def __init__(self, owner: Dataset, kind: str) -> None:
        self._owner = owner
        self._kind = kind
        self._items: dict[str, Element] = {}

    def __getitem__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"no {self._kind[:-1]} named {name!r}; {self._kind}: {sorted(self._items)}"
            ) from None

    def __setitem__(self, name: str, element: Element) -> None:
        cls = KINDS[self._kind]
        if not isinstance(element, cls):
            raise ValidationError(
                f"{self._kind}[{name!r}]: expected a {cls.__name__}, got {type(element).__name__}"
            )
        check_name(name, f"{self._kind[:-1]}")
        clash = self._owner._find_casefold(name)
        if clash is not None and clash != (self._kind, name):
            raise ValidationError(
                f"{self._kind}[{name!r}]: the name clashes with "
                f"{clash[0]}[{clash[1]!r}] (names must be unique across all "
                "kinds, ignoring case)"
            )
        element.name = name
        self._items[name] = element

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"{self._kind}: {sorted(self._items)}"


class Dataset:
    """Named elements of the five kinds."""

    images: ElementMap
    labels: ElementMap
    points: ElementMap
    shapes: ElementMap
    tables: ElementMap

    def __init__(
        self,
        images: Mapping[str, Image] | None = None,
        labels: Mapping[str, Labels] | None = None,
        points: Mapping[str, Points] | None = None,
        shapes: Mapping[str, Shapes] | None = None,
        tables: Mapping[str, Table] | None = None,
    ) -> None:
        given = {
            "images": images,
            "labels": labels,
            "points": points,
            "shapes": shapes,
            "tables": tables,
        }
        for kind in KINDS:
            object.__setattr__(self, kind, ElementMap(self, kind))
        object.__setattr__(self, "_links", LinkGraph(self))
        for kind, elements in given.items():
            for name, el in (elements or {}).items():
                getattr(self, kind)[name] = el
        self.validate_links()

    def _find_casefold(self, name: str) -> tuple[str, str] | None:
        key = name.casefold()
        for kind in KINDS:
            for other in getattr(self, kind):
                if other.casefold() == key:
                    return kind, other
        return None

    def __setattr__(self, key: str, value: Any) -> None:
        if key in KINDS:
            raise AttributeError(f"assign elements by name instead: ds.{key}[name] = element")
        object.__setattr__(self, key, value)

    # --- access ----------------------------------------------------------------------
    def items(self) -> Iterator[tuple[str, Element]]:
        """(name, element) for every element of every kind."""
        for kind in KINDS:
            yield from getattr(self, kind).items()

    def __getitem__(self, name: str) -> Any:
        for kind in KINDS:
            if name in getattr(self, kind):
                return getattr(self, kind)[name]
        raise KeyError(f"no element named {name!r}; elements: {[n for n, _ in self.items()]}")

    def __contains__(self, name: object) -> bool:
        return any(name in getattr(self, kind) for kind in KINDS)

    def kind_of(self, name: str) -> str:
        for kind in KINDS:
            if name in getattr(self, kind):
                return kind
        raise KeyError(f"no element named {name!r}")

    def __len__(self) -> int:
        return sum(len(getattr(self, kind)) for kind in KINDS)

    @property
    def coordinate_systems(self) -> list[str]:
        """Every coordinate system some element has a transform to, sorted."""
        return sorted({cs for _, el in self.items() for cs in el.transforms})

    def transform_graph(self) -> TransformGraph:
        return TransformGraph.from_elements((n, el.transforms) for n, el in self.items())

    def tables_annotating(self, name: str) -> dict[str, Table]:
        return {n: t for n, t in self.tables.items() if t.annotates(name)}

    @property
    def links(self) -> LinkGraph:
        """The element-table link graph: ``ds.links.tables_of(element)``,
        ``ds.links.elements_of(table)`` (tables' regions plus ``sf.annotate`` links)."""
        return self._links

    def validate_links(self) -> None:
        """Check that every table's region, and every annotate link, names elements of this
        Dataset."""
        for name, table in self.tables.items():
            missing = [r for r in table.__dict__.get("region", []) if r not in self]
            if missing:
                raise ValidationError(
                    f"Table {name!r}: region {missing} names no element of this Dataset"
                )
        self._links.validate()

    # --- storage ---------------------------------------------------------------------
    def write(
        self,
        url: Any,
        *,
        format: str = "spatialdata",
        message: str | None = None,
        branch: str = "main",
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
        materialize: bool = False,
    ) -> str | None:
        """Write every element to ``url`` (a path or fsspec URL; ``storage_options`` as for
        fsspec, e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for S3).

        ``format="spatialdata"``: the SpatialData 0.8 zarr layout, readable by spatialdata 0.8.
        Each element is written under a temporary name and moved into place when complete, so
        a failed write leaves no half-written element. An existing store is refused unless
        ``overwrite=True``, which replaces it (a SpatialData store only) so that it then holds
        exactly this Dataset.
        ``format="icechunk"``: the native layout in an Icechunk repository (local directory or
        ``s3://``; created if needed), written by Dask tasks (on the active distributed client
        if there is one) into one fork and committed once on ``branch`` with ``message``;
        elements of the same name are replaced, others kept. If any task fails nothing is
        committed. Returns the new snapshot id (None for the SpatialData layout).
        Elements linked to external files (``sf.link``) are written as links (location,
        options, fingerprint in the root attributes), not as data, unless
        ``materialize=True``; the link graph (``ds.links``) is written with them."""
        from spatialflow.io import write

        return write(
            self,
            url,
            format=format,
            message=message,
            branch=branch,
            overwrite=overwrite,
            storage_options=storage_options,
            materialize=materialize,
        )

    def to_spatialdata(self) -> Any:
        """The equivalent ``spatialdata.SpatialData`` (needs spatialdata installed)."""
        from spatialflow.io.convert import to_spatialdata

        return to_spatialdata(self)

    # --- reprs -----------------------------------------------------------------------
    def __repr__(self) -> str:
        lines = [f"spatialflow.Dataset with {len(self)} elements"]
        for kind in KINDS:
            m = getattr(self, kind)
            if not len(m):
                continue
            lines.append(f"  {kind}:")
            for name, el in m.items():
                lines.append(f"    {name}: {el.summary()}")
        cs = self.coordinate_systems
        lines.append(f"  coordinate systems: {', '.join(cs) if cs else '-'}")
        for cs_name in cs:
            members = [n for n, el in self.items() if cs_name in el.transforms]
            lines.append(f"    {cs_name}: {', '.join(members)}")
        links = list(self._links)
        if links:
            lines.append("  links:")
            lines.extend(f"    {lk.describe()}" for lk in links)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for kind in KINDS:
            for name, el in getattr(self, kind).items():
                cs = ", ".join(sorted(el.transforms)) or "-"
                rows.append(
                    f"<tr><td>{html.escape(kind)}</td><td><b>{html.escape(name)}</b></td>"
                    f"<td>{html.escape(el.summary())}</td><td>{html.escape(cs)}</td></tr>"
                )
        body = "".join(rows) or "<tr><td colspan='4'><i>empty</i></td></tr>"
        return (
            "<div class='spatialflow-dataset'><b>spatialflow.Dataset</b> "
            f"({len(self)} elements)<table><thead><tr><th>kind</th><th>name</th>"
            "<th>data</th><th>coordinate systems</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div>"
        )
