"""Table: an AnnData whose rows annotate instances of other elements.

``region`` names the annotated element(s), ``obs[region_key]`` (categorical) says which one each
row annotates and ``obs[instance_key]`` which instance (an index value or label id). The same
three facts are kept in ``uns["spatialdata_attrs"]``, where SpatialData looks for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import pandas as pd

from spatialflow.elements.base import Element

__all__ = ["Table"]

ATTRS = "spatialdata_attrs"


class Table(Element):
    kind = "tables"

    def __init__(
        self,
        data: ad.AnnData,
        *,
        region: str | Sequence[str] | None = None,
        region_key: str | None = None,
        instance_key: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(transforms={}, name=name)
        if not isinstance(data, ad.AnnData):
            raise self.error("data", f"expected an AnnData, got {type(data).__name__}")
        attrs = dict(data.uns.get(ATTRS, {}))
        region = region if region is not None else attrs.get("region")
        region_key = region_key if region_key is not None else attrs.get("region_key")
        instance_key = instance_key if instance_key is not None else attrs.get("instance_key")
        self.data = data
        if region is None and region_key is None and instance_key is None:
            self.region: list[str] = []
            self.region_key = self.instance_key = None
            return
        if region is None or region_key is None or instance_key is None:
            raise self.error(
                "region",
                "region, region_key and instance_key must be given "
                "together (or none of them for a table that annotates nothing)",
            )
        self.region = [region] if isinstance(region, str) else [str(r) for r in region]
        self.region_key, self.instance_key = region_key, instance_key
        self._validate()
        data.uns[ATTRS] = {
            "region": region if isinstance(region, str) else list(self.region),
            "region_key": region_key,
            "instance_key": instance_key,
        }

    def _validate(self) -> None:
        obs = self.data.obs
        for field, col in (("region_key", self.region_key), ("instance_key", self.instance_key)):
            if col not in obs.columns:
                raise self.error(
                    field, f"obs column {col!r} not found (obs columns: {list(obs.columns)})"
                )
        col = obs[self.region_key]
        if not isinstance(col.dtype, pd.CategoricalDtype):
            obs[self.region_key] = col = col.astype("category")
        unknown = sorted(set(map(str, col.dropna().unique())) - set(self.region))
        if unknown:
            raise self.error(
                "region",
                f"obs[{self.region_key!r}] names {unknown}, which are not in region {self.region}",
            )
        if col.isna().any():
            raise self.error("region_key", f"obs[{self.region_key!r}] has missing values")
        inst = obs[self.instance_key]
        if inst.isna().any():
            raise self.error("instance_key", f"obs[{self.instance_key!r}] has missing values")
        keys = pd.MultiIndex.from_arrays([col.cat.codes.to_numpy(), inst.to_numpy()])
        if not keys.is_unique:
            n_dup = int(keys.duplicated().sum())
            raise self.error(
                "instance_key",
                f"obs[{self.instance_key!r}] has {n_dup} duplicate instances within a region",
            )

    @property
    def axes(self) -> tuple[str, ...]:
        return ()

    def annotates(self, element_name: str) -> bool:
        return element_name in self.region

    def summary(self) -> str:
        links = f", annotates {self.region}" if self.region else ""
        return f"{self.data.n_obs} x {self.data.n_vars}{links}"

    def __repr__(self) -> str:
        return f"{self.label}: {self.summary()}"
