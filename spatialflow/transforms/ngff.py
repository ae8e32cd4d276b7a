"""Read and write transforms as OME-NGFF JSON, in both dialects spatialflow meets.

* **RFC-5 / ngff 0.6** (``to_ngff`` / ``from_ngff``): ``input``/``output`` are coordinate-system
  names (or ``{"name", "path"}``), parameters follow the axis order of those coordinate systems
  and are positional (an identity or scale between systems whose axes differ in order maps
  position i to position i; it is read as the equivalent named Affine),
  ``mapAxis`` is an index array, ``byDimension`` items carry ``input_axes``/``output_axes`` (indices
  into the parent's axes, or names) in any of the three accepted spellings, and ``bijection`` and
  ``inverseOf`` nest other transforms.
* **spatialdata 0.8** (``to_spatialdata_dict`` / ``from_spatialdata_dict``): what spatialdata
  writes and reads: full ``input``/``output`` coordinate systems with axis types and the
  placeholder unit ``"unit"`` on space axes, vectors and matrices over the element's own axes
  including the channel axis of rasters, and ``mapAxis`` as an ``{output: input}`` mapping.
  spatialdata reads only identity, scale, translation, affine, mapAxis and sequence, so rotation,
  byDimension, bijection and inverseOf are written to it as the equivalent affine.

Channel axes never reach a spatialflow transform: they are stripped on read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np

from spatialflow.errors import TransformError
from spatialflow.transforms.base import (
    Affine,
    Identity,
    MapAxis,
    Rotation,
    Scale,
    Transform,
    Translation,
)
from spatialflow.transforms.composite import Bijection, ByDimension, InverseOf, Sequence

__all__ = [
    "axis_dict",
    "coordinate_system_dict",
    "from_ngff",
    "from_spatialdata_dict",
    "parse_coordinate_system",
    "to_ngff",
    "to_spatialdata_dict",
]

Axes = tuple[str, ...]
ArrayLoader = Callable[[str], np.ndarray]
CHANNEL_AXES = frozenset({"c"})
KNOWN_TYPES = (
    "identity",
    "translation",
    "scale",
    "affine",
    "rotation",
    "mapAxis",
    "sequence",
    "byDimension",
    "bijection",
    "inverseOf",
)


def axis_dict(name: str) -> dict[str, str]:
    """An axis entry as spatialdata writes it (``c`` is a channel, others space with a unit)."""
    if name in CHANNEL_AXES:
        return {"name": name, "type": "channel"}
    return {"name": name, "type": "space", "unit": "unit"}


def coordinate_system_dict(name: str, axes: Seq[str]) -> dict[str, Any]:
    return {"name": name, "axes": [axis_dict(a) for a in axes]}


def parse_coordinate_system(
    ref: Any, known: Mapping[str, Axes] | None = None
) -> tuple[str | None, Axes | None]:
    """(name, axes) of an ``input``/``output`` field: a name, ``{name, path}`` or ``{name, axes}``."""
    known = known or {}
    if ref is None:
        return None, None
    if isinstance(ref, str):
        return ref, known.get(ref)
    if isinstance(ref, Mapping):
        name = ref.get("name")
        axes = ref.get("axes")
        if axes is not None:
            try:
                names = tuple(a["name"] if isinstance(a, Mapping) else str(a) for a in axes)
            except (KeyError, TypeError) as e:
                raise TransformError(f"coordinate system {name!r}: malformed axes {axes!r}") from e
            return name, names
        return name, known.get(name) if name is not None else None
    raise TransformError(f"input/output must be a name or an object, got {ref!r}")


def _params(d: Mapping[str, Any], key: str, loader: ArrayLoader | None, what: str) -> np.ndarray:
    if key in d:
        return np.asarray(d[key], dtype=np.float64)
    if "path" in d:
        if loader is None:
            raise TransformError(
                f"{what}: parameters stored at path {d['path']!r} cannot be read here"
            )
        return np.asarray(loader(d["path"]), dtype=np.float64)
    raise TransformError(f"{what}: missing field {key!r}")


def _fit(axes: Axes | None, n: int) -> Axes | None:
    return axes if axes is not None and len(axes) == n else None


def from_ngff(
    d: Mapping[str, Any],
    *,
    coordinate_systems: Mapping[str, Axes] | None = None,
    input_axes: Seq[str] | None = None,
    output_axes: Seq[str] | None = None,
    loader: ArrayLoader | None = None,
) -> Transform:
    """Parse one transform (either dialect). Axes come from its own ``input``/``output`` when
    they name known coordinate systems, else from ``input_axes``/``output_axes``."""
    if not isinstance(d, Mapping) or "type" not in d:
        raise TransformError(f"a transformation must be an object with a 'type', got {d!r}")
    kind = d["type"]
    cs = coordinate_systems or {}
    _, ia = parse_coordinate_system(d.get("input"), cs)
    _, oa = parse_coordinate_system(d.get("output"), cs)
    ia = ia or (tuple(input_axes) if input_axes is not None else None)
    oa = oa or (tuple(output_axes) if output_axes is not None else None)
    what = f"{kind} transformation"
    try:
        t = _parse(kind, d, ia, oa, cs, loader, what)
        return _positional(t, ia, oa) if kind in _SQUARE_KINDS else t
    except TransformError:
        raise
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise TransformError(f"{what}: malformed parameters ({e}) in {dict(d)!r}") from e


_SQUARE_KINDS = ("identity", "translation", "scale", "rotation")


def _positional(t: Transform, ia: Axes | None, oa: Axes | None) -> Transform:
    """RFC-5 parameters are positional: a square transform between coordinate systems whose
    axes differ in name or order maps input position i to output position i."""
    if ia is None or oa is None or ia == oa or len(ia) != len(oa):
        return t
    return Affine(t.to_affine_matrix(ia, ia), ia, oa)


def _parse(
    kind: str,
    d: Mapping[str, Any],
    ia: Axes | None,
    oa: Axes | None,
    cs: Mapping[str, Axes],
    loader: ArrayLoader | None,
    what: str,
) -> Transform:
    if kind == "identity":
        return Identity(ia) if ia else Identity()
    if kind in ("translation", "scale"):
        v = _params(d, kind, loader, what)
        if v.ndim != 1:
            raise TransformError(f"{what}: expected a vector, got shape {v.shape}")
        if ia is not None and len(ia) != v.size:
            raise TransformError(f"{what}: {v.size} values for the {len(ia)} axes {ia}")
        return (Translation if kind == "translation" else Scale)(v, ia)
    if kind == "affine":
        m = _params(d, "affine", loader, what)
        if m.ndim == 1 and ia is not None and oa is not None and m.size == len(oa) * (len(ia) + 1):
            m = m.reshape(len(oa), len(ia) + 1)
        if m.ndim != 2:
            raise TransformError(f"{what}: matrix must be 2D, got shape {m.shape}")
        n_in = m.shape[1] - 1
        if ia is not None and len(ia) != n_in:
            raise TransformError(
                f"{what}: matrix shape {m.shape} needs {n_in} input axes, "
                f"the input has {len(ia)} {ia}"
            )
        n_out = (
            m.shape[0] - 1
            if (
                m.shape[0] == n_in + 1
                and oa is not None
                and len(oa) == n_in
                and np.allclose(m[-1], np.eye(n_in + 1)[-1])
            )
            else m.shape[0]
        )
        if oa is not None and len(oa) != n_out:
            raise TransformError(
                f"{what}: matrix shape {m.shape} needs {n_out} output axes, "
                f"the output has {len(oa)} {oa}"
            )
        return Affine(m, ia, oa if oa is not None else (ia if n_out == n_in else None))
    if kind == "rotation":
        m = _params(d, "rotation", loader, what)
        return Rotation(m, ia)
    if kind == "mapAxis":
        spec = d.get("mapAxis")
        if isinstance(spec, Mapping):
            names = {str(k): str(v) for k, v in spec.items()}
            # output axes the mapping does not name pass through (spatialdata's 3D case)
            for a in oa or ia or ():
                if a not in names and ia is not None and a in ia:
                    names[a] = a
            return MapAxis.from_names(names, ia)
        if spec is None:
            raise TransformError(f"{what}: missing field 'mapAxis'")
        spec = list(spec)
        if ia is None:
            ia = _fit(oa, len(spec))
        if ia is None:
            raise TransformError(f"{what}: the input coordinate system's axes are unknown")
        return MapAxis(spec, ia, oa if oa is not None else None)
    if kind == "sequence":
        children = d.get("transformations")
        if not isinstance(children, list):
            raise TransformError(f"{what}: 'transformations' must be a list")
        out: list[Transform] = []
        cur = ia
        for k, child in enumerate(children):
            last = k == len(children) - 1
            t = from_ngff(
                child,
                coordinate_systems=cs,
                input_axes=cur,
                output_axes=oa if last else None,
                loader=loader,
            )
            out.append(t)
            cur = t.output_axes_for(cur) if cur is not None else t.output_axes
        return Sequence(out)
    if kind == "byDimension":
        items = d.get("transformations")
        if not isinstance(items, list) or not items:
            raise TransformError(f"{what}: 'transformations' must be a non-empty list")
        parts = []
        for item in items:
            if not isinstance(item, Mapping):
                raise TransformError(f"{what}: item {item!r} is not an object")
            if "transformation" in item:
                sub = item["transformation"]
                i_ax = item.get("input_axes", item.get("inputAxes"))
                o_ax = item.get("output_axes", item.get("outputAxes"))
            else:  # flat form: the parameters inline
                sub = {
                    k: v
                    for k, v in item.items()
                    if k not in ("input_axes", "output_axes", "inputAxes", "outputAxes")
                }
                i_ax = item.get("input_axes", item.get("inputAxes"))
                o_ax = item.get("output_axes", item.get("outputAxes"))
            if i_ax is None or o_ax is None:
                raise TransformError(f"{what}: every item needs input_axes and output_axes")
            i_names = _axis_names(i_ax, ia, what)
            o_names = _axis_names(o_ax, oa if oa is not None else ia, what)
            t = from_ngff(
                sub, coordinate_systems=cs, input_axes=i_names, output_axes=o_names, loader=loader
            )
            parts.append((t, i_names, o_names))
        return ByDimension(parts)
    if kind == "bijection":
        if "forward" not in d or "inverse" not in d:
            raise TransformError(f"{what}: needs 'forward' and 'inverse'")
        fwd = from_ngff(
            d["forward"], coordinate_systems=cs, input_axes=ia, output_axes=oa, loader=loader
        )
        inv = from_ngff(
            d["inverse"],
            coordinate_systems=cs,
            input_axes=oa or fwd.output_axes,
            output_axes=ia or fwd.input_axes,
            loader=loader,
        )
        return Bijection(fwd, inv)
    if kind == "inverseOf":
        if "transformation" not in d:
            raise TransformError(f"{what}: needs 'transformation'")
        # inside a sequence the output system may be unnamed: the inner transform then maps
        # the same axes (an inverse exists only between systems of equal dimension)
        inner = from_ngff(
            d["transformation"],
            coordinate_systems=cs,
            input_axes=oa if oa is not None else ia,
            output_axes=ia if ia is not None else oa,
            loader=loader,
        )
        return InverseOf(inner)
    if kind in ("displacements", "coordinates"):
        raise TransformError(f"{what}: displacement and coordinate fields are not supported")
    raise TransformError(f"unknown transformation type {kind!r}; known: {', '.join(KNOWN_TYPES)}")


def _axis_names(spec: Any, parent: Axes | None, what: str) -> Axes:
    names = []
    for a in spec:
        if isinstance(a, int | np.integer) and not isinstance(a, bool):
            if parent is None or not 0 <= a < len(parent):
                raise TransformError(f"{what}: axis index {a} out of range for axes {parent}")
            names.append(parent[a])
        elif isinstance(a, str):
            names.append(a)
        else:
            raise TransformError(f"{what}: axes must be indices or names, got {a!r}")
    return tuple(names)


# --- RFC-5 writer ------------------------------------------------------------------------
def to_ngff(
    t: Transform,
    *,
    input: Any = None,
    output: Any = None,
    input_axes: Seq[str] | None = None,
    output_axes: Seq[str] | None = None,
) -> dict[str, Any]:
    """RFC-5 JSON; parameters in the order of ``input_axes``/``output_axes`` when given."""
    ia = tuple(input_axes) if input_axes is not None else t.input_axes
    oa = tuple(output_axes) if output_axes is not None else t.output_axes_for(ia)
    d = _to_ngff(t, ia, oa)
    if input is not None:
        d["input"] = input
    if output is not None:
        d["output"] = output
    return d


def _to_ngff(t: Transform, ia: Axes, oa: Axes) -> dict[str, Any]:
    if isinstance(t, Identity) and ia == oa:
        return {"type": "identity"}
    if isinstance(t, Translation | Scale) and ia == oa:
        m = t.to_affine_matrix(ia, oa)
        v = m[:-1, -1] if isinstance(t, Translation) else np.diag(m)[:-1]
        return {"type": t.type_name, t.type_name: v.tolist()}
    if isinstance(t, Rotation) and ia == oa:
        return {"type": "rotation", "rotation": t.to_affine_matrix(ia, oa)[:-1, :-1].tolist()}
    if isinstance(t, MapAxis):
        m = t.to_affine_matrix(ia, oa)[:-1, :-1]
        if np.all(m.sum(axis=1) == 1) and np.all((m == 0) | (m == 1)):
            return {"type": "mapAxis", "mapAxis": [int(np.argmax(r)) for r in m]}
    if isinstance(t, Sequence):
        children, cur = [], ia
        for k, c in enumerate(t.transformations):
            nxt = oa if k == len(t.transformations) - 1 else c.output_axes_for(cur)
            children.append(_to_ngff(c, cur, nxt))
            cur = nxt
        return {"type": "sequence", "transformations": children}
    if isinstance(t, ByDimension):
        items = []
        for sub, i_ax, o_ax in t.parts:
            if not set(i_ax) <= set(ia) or not set(o_ax) <= set(oa):
                break
            items.append(
                {
                    "transformation": _to_ngff(sub, i_ax, o_ax),
                    "input_axes": [ia.index(a) for a in i_ax],
                    "output_axes": [oa.index(a) for a in o_ax],
                }
            )
        else:
            return {"type": "byDimension", "transformations": items}
    if isinstance(t, Bijection):
        return {
            "type": "bijection",
            "forward": _to_ngff(t.forward, ia, oa),
            "inverse": _to_ngff(t.inverse_, oa, ia),
        }
    if isinstance(t, InverseOf):
        return {"type": "inverseOf", "transformation": _to_ngff(t.transformation, oa, ia)}
    return {"type": "affine", "affine": t.to_affine_matrix(ia, oa)[:-1].tolist()}


# --- spatialdata dialect -----------------------------------------------------------------
def to_spatialdata_dict(
    t: Transform, element_axes: Seq[str], coordinate_system: str
) -> dict[str, Any]:
    """The JSON spatialdata 0.8 writes for ``t`` from an element with ``element_axes``
    (rasters include ``c``) to ``coordinate_system``."""
    elem = tuple(element_axes)
    channels = tuple(a for a in elem if a in CHANNEL_AXES)
    spatial = tuple(a for a in elem if a not in CHANNEL_AXES)
    return _sd(t, elem, channels, spatial, coordinate_system, input_name="".join(elem))


def _sd(
    t: Transform, elem: Axes, channels: Axes, spatial: Axes, cs_name: str, input_name: str
) -> dict[str, Any]:
    full_in = channels + spatial if elem[: len(channels)] == channels else elem

    def wrap(d: dict[str, Any], out_axes: Axes) -> dict[str, Any]:
        d["input"] = coordinate_system_dict(input_name, full_in)
        d["output"] = coordinate_system_dict(cs_name, out_axes)
        return d

    if isinstance(t, Identity):
        return wrap({"type": "identity"}, full_in)
    if isinstance(t, Scale | Translation) and set(t.axes) <= set(spatial):
        m = t.to_affine_matrix(full_in, full_in)
        v = np.diag(m)[:-1] if isinstance(t, Scale) else m[:-1, -1]
        return wrap({"type": t.type_name, t.type_name: v.tolist()}, full_in)
    if isinstance(t, MapAxis) and set(t.output_axes) == set(t.input_axes) == set(spatial):
        out = channels + t.output_axes
        mapping = {c: c for c in channels} | t.as_names()
        return wrap({"type": "mapAxis", "mapAxis": mapping}, out)
    if isinstance(t, Sequence) and all(
        set(c.output_axes_for(spatial)) == set(spatial) for c in t.transformations
    ):
        children = [_sd(c, elem, channels, spatial, cs_name, input_name) for c in t.transformations]
        return wrap({"type": "sequence", "transformations": children}, full_in)
    out_spatial = tuple(t.output_axes) + tuple(
        a for a in spatial if a not in t.output_axes and a not in t.input_axes
    )
    out = channels + out_spatial
    m = t.to_affine_matrix(full_in, out)
    return wrap({"type": "affine", "affine": m[:-1].tolist()}, out)


def from_spatialdata_dict(d: Mapping[str, Any]) -> tuple[str, Transform]:
    """(coordinate system name, transform) from one entry spatialdata wrote; channel axes dropped."""
    out_name, _ = parse_coordinate_system(d.get("output"))
    if out_name is None:
        raise TransformError(f"transformation {d.get('type')!r} has no output coordinate system")
    return out_name, strip_axes(from_ngff(d), CHANNEL_AXES)


def strip_axes(t: Transform, drop: frozenset[str] | set[str]) -> Transform:
    """The same transform with the given (channel) axes removed."""
    if not (set(t.input_axes) | set(t.output_axes)) & set(drop):
        return t
    if isinstance(t, Identity):
        return Identity(tuple(a for a in t.input_axes if a not in drop)) if t.input_axes else t
    if isinstance(t, Scale | Translation):
        keep = [k for k, a in enumerate(t.axes) if a not in drop]
        vec = t.scale if isinstance(t, Scale) else t.translation
        return type(t)(vec[keep], tuple(t.axes[k] for k in keep))
    if isinstance(t, MapAxis):
        names = {o: i for o, i in t.as_names().items() if o not in drop}
        return MapAxis.from_names(names, tuple(a for a in t.input_axes if a not in drop))
    if isinstance(t, Sequence):
        return Sequence([strip_axes(c, drop) for c in t.transformations])
    ia = tuple(a for a in t.input_axes if a not in drop)
    oa = tuple(a for a in t.output_axes if a not in drop)
    return Affine(t.to_affine_matrix(ia, oa), ia, oa)
