"""OME-NGFF 0.6 "scene" metadata: coordinate systems and the transforms between them.

A scene lives in a group's ``zarr.json`` under ``attributes.ome.scene`` (``attributes.ome`` or
``attributes.scene`` directly are accepted too) as ``coordinateSystems`` (name + axes) and
``coordinateTransformations`` (each with ``input`` and ``output``, a name or ``{name, path}``).
A ``path`` points to a sub-group whose own ``zarr.json`` may define that coordinate system
(e.g. an image's array space). Parameters stored as arrays (``"path"`` instead of values) are
read with zarr, imported only then, so the common case needs nothing but ``json``.

This module backs ``spatialflow map-coords``, the OME-Zarr transformation conformance
interface; it must stay light to import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spatialflow.errors import FormatError, TransformError
from spatialflow.transforms.base import Transform
from spatialflow.transforms.graph import Node, TransformGraph
from spatialflow.transforms.ngff import from_ngff, parse_coordinate_system, to_ngff

__all__ = ["Scene", "read_scene", "scene_dict"]

Axes = tuple[str, ...]


class Scene:
    """Coordinate systems (name -> axes) and a graph of the transforms between them."""

    def __init__(
        self, coordinate_systems: Mapping[str, Axes], transforms: list[tuple[str, str, Transform]]
    ) -> None:
        self.coordinate_systems = dict(coordinate_systems)
        self.graph = TransformGraph()
        for name in self.coordinate_systems:
            self.graph.add_node(Node("cs", name))
        for src, dst, t in transforms:
            self.graph.add_edge(Node("cs", src), Node("cs", dst), t)

    def transform_between(self, source: str, target: str) -> Transform:
        for n in (source, target):
            if Node("cs", n) not in self.graph.nodes:
                raise TransformError(
                    f"unknown coordinate system {n!r}; known: "
                    f"{sorted(self.graph.coordinate_systems())}"
                )
        return self.graph.path(Node("cs", source), Node("cs", target))

    def map(self, source: str, target: str, coords: Any) -> np.ndarray:
        """Map points given on ``source``'s axes (in its order) to ``target``'s axes."""
        pts = np.asarray(coords, dtype=np.float64)
        if pts.ndim == 1:
            pts = pts[None, :]
        t = self.transform_between(source, target)
        src_axes = self.coordinate_systems.get(source)
        dst_axes = self.coordinate_systems.get(target)
        if src_axes is None:
            src_axes = t.input_axes if len(t.input_axes) == pts.shape[1] else None
        if src_axes is None or len(src_axes) != pts.shape[1]:
            raise TransformError(
                f"coordinates with {pts.shape[1]} values do not match the axes "
                f"{src_axes} of coordinate system {source!r}"
            )
        return t.apply(pts, src_axes, dst_axes)


def _read_json(path: Path) -> dict[str, Any]:
    f = path / "zarr.json" if path.is_dir() else path
    try:
        return json.loads(f.read_text())
    except FileNotFoundError as e:
        raise FormatError(f"{f}: not found; expected a zarr group with a zarr.json") from e
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"{f}: cannot be read as JSON ({e})") from e


def _scene_attrs(attrs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    ome = attrs.get("ome", {})
    for cand in (
        ome.get("scene") if isinstance(ome, Mapping) else None,
        ome,
        attrs.get("scene"),
        attrs,
    ):
        if isinstance(cand, Mapping) and (
            "coordinateTransformations" in cand or "coordinateSystems" in cand
        ):
            return cand
    return None


def _systems(block: Mapping[str, Any] | None) -> dict[str, Axes]:
    out: dict[str, Axes] = {}
    for cs in (block or {}).get("coordinateSystems", []) or []:
        name, axes = parse_coordinate_system(cs)
        if name is None or axes is None:
            raise FormatError(f"malformed coordinate system {cs!r}: needs a name and axes")
        out[name] = axes
    return out


def _sub_systems(root: Path, rel: str) -> dict[str, Axes]:
    try:
        attrs = _read_json(root / rel).get("attributes", {})
    except FormatError:
        return {}
    found = _systems(_scene_attrs(attrs))
    ome = attrs.get("ome", {}) if isinstance(attrs.get("ome"), Mapping) else {}
    for ms in ome.get("multiscales", []) or []:
        found.update(_systems(ms))
    return found


def read_scene(path: str | Path) -> Scene:
    """The scene of the group at ``path``."""
    root = Path(path)
    attrs = _read_json(root).get("attributes", {})
    block = _scene_attrs(attrs)
    if block is None:
        raise FormatError(
            f"{root}: zarr.json has no ngff scene (attributes.ome.scene with "
            "coordinateSystems and coordinateTransformations)"
        )
    systems = _systems(block)
    refs = []
    for d in block.get("coordinateTransformations", []) or []:
        for key in ("input", "output"):
            ref = d.get(key) if isinstance(d, Mapping) else None
            if isinstance(ref, Mapping) and ref.get("path") and ref.get("name") not in systems:
                systems.update(
                    {k: v for k, v in _sub_systems(root, ref["path"]).items() if k not in systems}
                )
        refs.append(d)

    def loader(rel: str) -> np.ndarray:
        import zarr  # only for parameters stored as arrays

        return np.asarray(zarr.open_array(str(root / rel), mode="r")[...])

    transforms = []
    for d in refs:
        src, _ = parse_coordinate_system(d.get("input"), systems)
        dst, _ = parse_coordinate_system(d.get("output"), systems)
        if src is None or dst is None:
            raise FormatError(
                f"{root}: a scene transformation of type {d.get('type')!r} lacks "
                "an input or output coordinate system"
            )
        transforms.append((src, dst, from_ngff(d, coordinate_systems=systems, loader=loader)))
    return Scene(systems, transforms)


def scene_dict(
    coordinate_systems: Mapping[str, Axes], transforms: list[tuple[str, str, Transform]]
) -> dict[str, Any]:
    """``attributes`` of a zarr.json holding this scene (ngff 0.6)."""
    return {
        "ome": {
            "version": "0.6",
            "scene": {
                "coordinateSystems": [
                    {"name": n, "axes": [{"name": a, "type": "space"} for a in axes]}
                    for n, axes in coordinate_systems.items()
                ],
                "coordinateTransformations": [
                    to_ngff(
                        t,
                        input=src,
                        output=dst,
                        input_axes=coordinate_systems[src],
                        output_axes=coordinate_systems[dst],
                    )
                    for src, dst, t in transforms
                ],
            },
        }
    }
