"""The element-table link graph: which table annotates which element, readable both ways.

SpatialData ties a table to elements one way only (``region``/``region_key``/``instance_key``
on the table). Here every relationship is a :class:`Link` record (table, element, method, keys)
in a :class:`LinkGraph` that answers ``tables_of(element)`` and ``elements_of(table)``; one
table may annotate several elements and one element may be annotated by several tables.

Design decisions:

* Links implied by a table's own ``region``/``region_key``/``instance_key`` (``origin="region"``)
  are *derived* from the tables every time the graph is read, never stored, so they cannot
  drift from the tables. Links added by ``sf.annotate`` (``origin="annotate"``) are stored in
  the graph (and in a store's root attributes, io/links.py); an annotate link for a
  (table, element) pair replaces the derived one.
* Methods: ``index`` (the table column ``table_key`` holds the element's index values or label
  ids), ``column`` (``table_key`` on the table equals ``element_key`` on the element) and
  ``sjoin`` (a spatial join with ``predicate`` between ``element`` and the element ``via``
  that the table's rows already annotate). An sjoin is evaluated lazily by the engine
  (plan/sjoin.py) the first time its pairs are needed and cached in the graph, keyed by the
  link and the identity of both elements' data.
* Records are frozen dataclasses of plain strings, so they hash, compare and serialize to
  JSON as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from spatialflow.errors import ValidationError

if TYPE_CHECKING:
    from spatialflow.dataset import Dataset

__all__ = ["METHODS", "PREDICATES", "Link", "LinkGraph"]

Method = Literal["index", "column", "sjoin"]
METHODS: tuple[str, ...] = ("index", "column", "sjoin")
PREDICATES: tuple[str, ...] = (
    "intersects",
    "within",
    "contains",
    "overlaps",
    "crosses",
    "touches",
    "covers",
    "covered_by",
    "contains_properly",
)


@dataclass(frozen=True)
class Link:
    """One relationship between a table and an element.

    ``table_key``: the obs column holding each row's key (index/column methods).
    ``element_key``: the element column matched by ``table_key`` (column method; None means
    the element's index, or label ids for labels). ``region_key``: when set, only rows with
    ``obs[region_key] == element`` take part (the spatialdata region model). ``via``,
    ``predicate``, ``coordinate_system``: the sjoin method's inputs.
    """

    table: str
    element: str
    method: Method = "index"
    table_key: str | None = None
    element_key: str | None = None
    region_key: str | None = None
    via: str | None = None
    predicate: str | None = None
    coordinate_system: str | None = None
    origin: Literal["region", "annotate"] = "annotate"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "links") -> Link:
        try:
            link = cls(**{k: d[k] for k in d})
        except TypeError as e:
            raise ValidationError(f"{where}: malformed link record {d!r} ({e})") from e
        if link.method not in METHODS:
            raise ValidationError(
                f"{where}: link {link.table!r} -> {link.element!r} has unknown method "
                f"{link.method!r} (known: {list(METHODS)})"
            )
        return link

    def describe(self) -> str:
        if self.method == "sjoin":
            how = f"sjoin({self.predicate}) via {self.via!r} in {self.coordinate_system!r}"
        elif self.method == "column":
            how = f"obs[{self.table_key!r}] == {self.element_key!r}"
        else:
            how = f"obs[{self.table_key!r}] == index"
        if self.region_key:
            how += f" where obs[{self.region_key!r}] == {self.element!r}"
        return f"{self.table} -> {self.element}: {how}"


class LinkGraph:
    """The links of one Dataset (``ds.links``): derived region links plus annotate links."""

    def __init__(self, owner: Dataset) -> None:
        self._owner = owner
        self._explicit: dict[tuple[str, str], Link] = {}
        self._cache: dict[Any, Any] = {}

    # --- records -----------------------------------------------------------------------
    def _derived(self) -> Iterator[Link]:
        from spatialflow.elements.linked import is_linked, is_materialized

        for name, table in self._owner.tables.items():
            if is_linked(table) and not is_materialized(table):
                region = table.__dict__.get("region") or []
                region_key = table.__dict__.get("region_key")
                instance_key = table.__dict__.get("instance_key")
            else:
                region, region_key = table.region, table.region_key
                instance_key = table.instance_key
            for element in region:
                yield Link(
                    name,
                    element,
                    "index",
                    table_key=instance_key,
                    region_key=region_key,
                    origin="region",
                )

    def __iter__(self) -> Iterator[Link]:
        seen = set(self._explicit)
        for link in self._derived():
            if (link.table, link.element) not in seen:
                yield link
        yield from self._explicit.values()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, pair: object) -> bool:
        return any((lk.table, lk.element) == pair for lk in self)

    def explicit(self) -> list[Link]:
        """The links added by ``sf.annotate`` (what a store records)."""
        return list(self._explicit.values())

    def tables_of(self, element: str) -> list[str]:
        """The tables annotating ``element`` (in table order)."""
        return list(dict.fromkeys(lk.table for lk in self if lk.element == element))

    def elements_of(self, table: str) -> list[str]:
        """The elements ``table`` annotates."""
        return list(dict.fromkeys(lk.element for lk in self if lk.table == table))

    def get(self, table: str, element: str) -> Link:
        for lk in self:
            if lk.table == table and lk.element == element:
                return lk
        raise ValidationError(
            f"table {table!r} does not annotate element {element!r} (it annotates "
            f"{self.elements_of(table)}); add a link with sf.annotate(ds, {element!r}, "
            f"{table!r}, method=...)"
        )

    # --- changes -----------------------------------------------------------------------
    def add(self, link: Link) -> Link:
        """Record ``link`` (checked against the Dataset), replacing one for the same pair."""
        self.check(link)
        self._explicit[(link.table, link.element)] = link
        self._cache = {k: v for k, v in self._cache.items() if k[0] != link}
        return link

    def remove(self, table: str, element: str) -> None:
        if (table, element) not in self._explicit:
            raise ValidationError(
                f"no annotate link {table!r} -> {element!r} to remove (derived region links "
                "change with the table's region)"
            )
        del self._explicit[(table, element)]

    def check(self, link: Link) -> None:
        """That ``link`` names a table and an element of the Dataset."""
        ds = self._owner
        if link.table not in ds.tables:
            raise ValidationError(
                f"link {link.table!r} -> {link.element!r}: no table named {link.table!r} "
                f"(tables: {sorted(ds.tables)})"
            )
        for what, name in (("element", link.element), ("via element", link.via)):
            if name is None:
                continue
            if name not in ds or ds.kind_of(name) in ("tables", "images"):
                raise ValidationError(
                    f"link {link.table!r} -> {link.element!r}: no {what} named {name!r} that "
                    "a table can annotate (labels, points or shapes); elements: "
                    f"{[n for n, _ in ds.items() if ds.kind_of(n) not in ('tables', 'images')]}"
                )

    def validate(self) -> None:
        for link in self._explicit.values():
            self.check(link)

    # --- evaluated pairs (sjoin) ---------------------------------------------------------
    def cached(self, key: Any) -> Any:
        return self._cache.get(key)

    def store(self, key: Any, value: Any) -> None:
        self._cache[key] = value

    def __repr__(self) -> str:
        links = list(self)
        if not links:
            return "links: -"
        return "links:\n" + "\n".join(f"  {lk.describe()}" for lk in links)
