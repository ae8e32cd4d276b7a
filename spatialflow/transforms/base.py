"""Coordinate transformation classes: the OME-NGFF RFC-5 set.

Every transform maps coordinates given on named *input axes* to named *output axes*. All types of
the set are affine maps, so each class reduces itself to a homogeneous matrix over its own axes
(:meth:`Transform.own_matrix`); :meth:`Transform.to_affine_matrix` then embeds that matrix into the
axes of the data at hand, the way spatialdata does:

* data axes the transform does not name pass through unchanged (a 2D ``(x, y)`` transform applied
  to 3D points leaves ``z`` untouched);
* transform input axes the data lacks contribute nothing (their coordinate is taken as 0);
* an output axis that is neither produced by the transform nor passed through is an error.

Inverses are true inverses: a matrix inverse, never a transpose (a rotation read from a file need
not be exactly orthonormal), and a :class:`Bijection` uses the inverse it was given. A
:class:`Sequence` of transforms simplifies to one :class:`Affine`. The composite types
(Sequence, ByDimension, Bijection, InverseOf) live in ``composite.py``.

When a transform is created without axes, 2 and 3 parameters default to ``(x, y)`` and
``(x, y, z)``; anything else must name its axes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np

from spatialflow.errors import TransformError

__all__ = [
    "Affine",
    "Identity",
    "MapAxis",
    "Rotation",
    "Scale",
    "Transform",
    "Translation",
    "default_axes",
]

Axes = tuple[str, ...]


def default_axes(n: int, what: str) -> Axes:
    """Axes assumed when a transform is given without them (2 -> (x, y), 3 -> (x, y, z))."""
    if n == 2:
        return ("x", "y")
    if n == 3:
        return ("x", "y", "z")
    raise TransformError(f"{what}: {n} parameters given without axes; name the axes explicitly")


def _check_axes(axes: Iterable[str] | None, n: int | None, what: str) -> Axes:
    if axes is None:
        if n is None:
            raise TransformError(f"{what}: axes are required")
        return default_axes(n, what)
    if isinstance(axes, str):
        axes = tuple(axes)
    axes = tuple(str(a) for a in axes)
    if len(set(axes)) != len(axes):
        raise TransformError(f"{what}: repeated axis names in {axes}")
    if n is not None and len(axes) != n:
        raise TransformError(f"{what}: {n} parameters but {len(axes)} axes {axes}")
    return axes


def _vector(values: Any, what: str) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TransformError(f"{what}: parameters must be numbers, got {values!r}") from e
    if v.ndim != 1 or v.size == 0:
        raise TransformError(f"{what}: expected a non-empty vector, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise TransformError(f"{what}: parameters must be finite, got {v.tolist()}")
    return v


def _inv(matrix: np.ndarray, what: str) -> np.ndarray:
    if matrix.shape[0] != matrix.shape[1]:
        raise TransformError(
            f"{what}: a {matrix.shape[0] - 1}x{matrix.shape[1] - 1} map between different "
            "numbers of axes has no inverse"
        )
    cond = np.linalg.cond(matrix)
    if not np.isfinite(cond) or cond > 1e14:
        raise TransformError(f"{what}: the matrix is singular and cannot be inverted")
    return np.linalg.inv(matrix)


class Transform(ABC):
    """A coordinate transformation between named axes."""

    type_name: str = ""

    @property
    @abstractmethod
    def input_axes(self) -> Axes: ...

    @property
    @abstractmethod
    def output_axes(self) -> Axes: ...

    @abstractmethod
    def own_matrix(self) -> np.ndarray:
        """Homogeneous matrix, shape (len(output_axes) + 1, len(input_axes) + 1)."""

    @abstractmethod
    def inverse(self) -> Transform:
        """The inverse transform; raises :class:`TransformError` if there is none."""

    @abstractmethod
    def _params(self) -> tuple: ...

    # --- derived behaviour -------------------------------------------------------------
    def output_axes_for(self, axes: Seq[str]) -> Axes:
        """The axes of the result when applied to data on ``axes`` (pass-through kept in place)."""
        axes = tuple(axes)
        ins, outs = self.input_axes, self.output_axes
        if set(ins) == set(outs) and len(ins) == len(outs):
            # a map onto the same axes (possibly permuted): keep the data's axis order
            return axes + tuple(a for a in outs if a not in axes)
        kept = [a for a in axes if a not in ins or a in outs]
        return tuple(kept) + tuple(a for a in outs if a not in kept)

    def to_affine_matrix(self, input_axes: Seq[str], output_axes: Seq[str]) -> np.ndarray:
        """Homogeneous matrix of this transform acting on data with the given axes."""
        return _embed(
            self.own_matrix(),
            self.input_axes,
            self.output_axes,
            tuple(input_axes),
            tuple(output_axes),
            repr(self),
        )

    def apply(
        self, coords: np.ndarray, axes: Seq[str], output_axes: Seq[str] | None = None
    ) -> np.ndarray:
        """Apply to an (N, D) array whose columns are ``axes``; returns (N, len(output axes))."""
        coords = np.asarray(coords, dtype=np.float64)
        axes = tuple(axes)
        if coords.ndim != 2 or coords.shape[1] != len(axes):
            raise TransformError(
                f"{self!r}: coordinates of shape {coords.shape} do not match axes {axes}"
            )
        out = tuple(output_axes) if output_axes is not None else self.output_axes_for(axes)
        m = self.to_affine_matrix(axes, out)
        return coords @ m[:-1, :-1].T + m[:-1, -1]

    def then(self, other: Transform) -> Transform:
        """``self`` followed by ``other`` (a :class:`~spatialflow.transforms.composite.Sequence`)."""
        from spatialflow.transforms.composite import Sequence

        return Sequence([self, other])

    def simplify(self) -> Transform:
        """An equivalent, simpler transform (a linear sequence becomes one Affine)."""
        return self

    def is_identity(self) -> bool:
        m = self.own_matrix()
        return (
            self.input_axes == self.output_axes
            and m.shape[0] == m.shape[1]
            and np.allclose(m, np.eye(m.shape[0]), rtol=0, atol=1e-12)
        )

    def is_similarity(self, axes: Seq[str] = ("x", "y")) -> bool:
        """True if, on ``axes``, this is a rotation/reflection times a uniform scale."""
        m = self.to_affine_matrix(axes, axes)[:-1, :-1]
        g = m.T @ m
        s = g[0, 0]
        return bool(s > 0 and np.allclose(g, s * np.eye(len(axes)), rtol=1e-9, atol=1e-12))

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return _params_equal(self._params(), other._params())  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.input_axes, self.output_axes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(_short(p) for p in self._params())})"


def _short(p: Any) -> str:
    if isinstance(p, np.ndarray):
        return np.array2string(p, precision=4, separator=",").replace("\n", "")
    if isinstance(p, list):
        return "[" + ", ".join(_short(x) for x in p) + "]"
    return repr(p)


def _params_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.shape(a) == np.shape(b) and np.array_equal(a, b))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_params_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _embed(
    m: np.ndarray, t_in: Axes, t_out: Axes, in_axes: Axes, out_axes: Axes, what: str
) -> np.ndarray:
    r = np.zeros((len(out_axes) + 1, len(in_axes) + 1))
    r[-1, -1] = 1.0
    for k, o in enumerate(out_axes):
        if o in t_out:
            row = m[t_out.index(o)]
            for j, a in enumerate(t_in):
                if a in in_axes:
                    r[k, in_axes.index(a)] = row[j]
            r[k, -1] = row[-1]
        elif o in in_axes and o not in t_in:
            r[k, in_axes.index(o)] = 1.0
        else:
            raise TransformError(
                f"{what}: cannot produce output axis {o!r} from input axes {in_axes} "
                f"(the transform maps {t_in} -> {t_out})"
            )
    return r


class Identity(Transform):
    """The identity: every axis passes through unchanged."""

    type_name = "identity"

    def __init__(self, axes: Iterable[str] | None = None) -> None:
        self._axes: Axes = () if axes is None else _check_axes(axes, None, "Identity")

    @property
    def input_axes(self) -> Axes:
        return self._axes

    @property
    def output_axes(self) -> Axes:
        return self._axes

    def own_matrix(self) -> np.ndarray:
        return np.eye(len(self._axes) + 1)

    def inverse(self) -> Identity:
        return self

    def _params(self) -> tuple:
        return ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity)

    def __hash__(self) -> int:
        return hash("Identity")


class Translation(Transform):
    type_name = "translation"

    def __init__(self, translation: Any, axes: Iterable[str] | None = None) -> None:
        self.translation = _vector(translation, "Translation")
        self.axes = _check_axes(axes, self.translation.size, "Translation")

    input_axes = property(lambda self: self.axes)  # type: ignore[assignment]
    output_axes = property(lambda self: self.axes)  # type: ignore[assignment]

    def own_matrix(self) -> np.ndarray:
        m = np.eye(len(self.axes) + 1)
        m[:-1, -1] = self.translation
        return m

    def inverse(self) -> Translation:
        return Translation(-self.translation, self.axes)

    def _params(self) -> tuple:
        return (self.translation, self.axes)


class Scale(Transform):
    type_name = "scale"

    def __init__(self, scale: Any, axes: Iterable[str] | None = None) -> None:
        self.scale = _vector(scale, "Scale")
        self.axes = _check_axes(axes, self.scale.size, "Scale")

    input_axes = property(lambda self: self.axes)  # type: ignore[assignment]
    output_axes = property(lambda self: self.axes)  # type: ignore[assignment]

    def own_matrix(self) -> np.ndarray:
        return np.diag(np.append(self.scale, 1.0))

    def inverse(self) -> Scale:
        if np.any(self.scale == 0):
            raise TransformError(f"{self!r}: a scale with a zero factor cannot be inverted")
        return Scale(1.0 / self.scale, self.axes)

    def _params(self) -> tuple:
        return (self.scale, self.axes)


class Affine(Transform):
    """An affine map; ``matrix`` is (n_out, n_in + 1) or homogeneous (n_out + 1, n_in + 1)."""

    type_name = "affine"

    def __init__(
        self,
        matrix: Any,
        input_axes: Iterable[str] | None = None,
        output_axes: Iterable[str] | None = None,
    ) -> None:
        try:
            m = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TransformError(f"Affine: matrix must be numeric, got {matrix!r}") from e
        if m.ndim != 2 or m.shape[1] < 2:
            raise TransformError(
                f"Affine: matrix must be 2D of shape (n_out, n_in + 1), got {m.shape}"
            )
        if not np.all(np.isfinite(m)):
            raise TransformError("Affine: matrix entries must be finite")
        n_in = m.shape[1] - 1
        if input_axes is not None:
            n_in_axes = len(tuple(input_axes))
            if n_in_axes != n_in:
                raise TransformError(
                    f"Affine: matrix of shape {m.shape} needs {m.shape[1] - 1} input axes, "
                    f"got {tuple(input_axes)}"
                )
        homogeneous_row = np.zeros(n_in + 1)
        homogeneous_row[-1] = 1.0
        n_out_axes = None if output_axes is None else len(tuple(output_axes))
        if n_out_axes is not None and m.shape[0] == n_out_axes + 1:
            if not np.allclose(m[-1], homogeneous_row):
                raise TransformError(
                    f"Affine: last row of a homogeneous matrix must be {homogeneous_row}"
                )
            m = m[:-1]
        elif n_out_axes is None and m.shape[0] == n_in + 1 and np.allclose(m[-1], homogeneous_row):
            m = m[:-1]
        if n_out_axes is not None and m.shape[0] != n_out_axes:
            raise TransformError(
                f"Affine: matrix of shape {m.shape} does not match output axes {tuple(output_axes)}"
            )
        self.input_axes_ = _check_axes(input_axes, n_in, "Affine")
        self.output_axes_ = _check_axes(output_axes, m.shape[0], "Affine")
        self.matrix = np.vstack([m, homogeneous_row])

    input_axes = property(lambda self: self.input_axes_)  # type: ignore[assignment]
    output_axes = property(lambda self: self.output_axes_)  # type: ignore[assignment]

    def own_matrix(self) -> np.ndarray:
        return self.matrix.copy()

    def inverse(self) -> Affine:
        return Affine(_inv(self.matrix, repr(self)), self.output_axes_, self.input_axes_)

    def _params(self) -> tuple:
        return (self.matrix, self.input_axes_, self.output_axes_)


class Rotation(Transform):
    """A rotation matrix (n x n). It is inverted as a matrix, so a not quite orthonormal matrix
    read from a file still round-trips exactly."""

    type_name = "rotation"

    def __init__(self, rotation: Any, axes: Iterable[str] | None = None) -> None:
        try:
            r = np.asarray(rotation, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TransformError(f"Rotation: matrix must be numeric, got {rotation!r}") from e
        if r.ndim == 1 and round(np.sqrt(r.size)) ** 2 == r.size:
            n = round(np.sqrt(r.size))
            r = r.reshape(n, n)
        if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
            raise TransformError(f"Rotation: matrix must be square (n x n), got shape {r.shape}")
        if not np.all(np.isfinite(r)):
            raise TransformError("Rotation: matrix entries must be finite")
        self.rotation = r
        self.axes = _check_axes(axes, r.shape[0], "Rotation")

    input_axes = property(lambda self: self.axes)  # type: ignore[assignment]
    output_axes = property(lambda self: self.axes)  # type: ignore[assignment]

    def own_matrix(self) -> np.ndarray:
        n = len(self.axes)
        m = np.eye(n + 1)
        m[:n, :n] = self.rotation
        return m

    def inverse(self) -> Rotation:
        return Rotation(_inv(self.rotation, repr(self)), self.axes)

    def _params(self) -> tuple:
        return (self.rotation, self.axes)


class MapAxis(Transform):
    """Axis permutation/selection: ``output[i] = input[map_axis[i]]`` (RFC-5's array form).

    ``MapAxis.from_names({"x": "y", "y": "x"})`` takes spatialdata's form
    (output axis name -> input axis name).
    """

    type_name = "mapAxis"

    def __init__(
        self,
        map_axis: Seq[int],
        input_axes: Iterable[str] | None = None,
        output_axes: Iterable[str] | None = None,
    ) -> None:
        idx = tuple(int(i) for i in map_axis)
        self.input_axes_ = _check_axes(input_axes, None if input_axes else len(idx), "MapAxis")
        self.output_axes_ = (
            _check_axes(output_axes, len(idx), "MapAxis") if output_axes else self.input_axes_
        )
        if len(idx) != len(self.output_axes_):
            raise TransformError(f"MapAxis: {len(idx)} entries but output axes {self.output_axes_}")
        n_in = len(self.input_axes_)
        if any(i < 0 or i >= n_in for i in idx):
            raise TransformError(f"MapAxis: indices {list(idx)} out of range for {n_in} input axes")
        self.map_axis = idx

    @classmethod
    def from_names(
        cls, mapping: Mapping[str, str], input_axes: Iterable[str] | None = None
    ) -> MapAxis:
        out = tuple(mapping)
        if input_axes is not None:
            ins = tuple(input_axes)
        elif set(mapping.values()) == set(mapping):
            ins = out  # a permutation: the same axes in, listed in the output's order
        else:
            ins = tuple(dict.fromkeys(mapping.values()))
        missing = [v for v in mapping.values() if v not in ins]
        if missing:
            raise TransformError(f"MapAxis: {missing} are not input axes {ins}")
        return cls([ins.index(mapping[o]) for o in out], ins, out)

    def as_names(self) -> dict[str, str]:
        return {
            o: self.input_axes_[i] for o, i in zip(self.output_axes_, self.map_axis, strict=True)
        }

    input_axes = property(lambda self: self.input_axes_)  # type: ignore[assignment]
    output_axes = property(lambda self: self.output_axes_)  # type: ignore[assignment]

    def output_axes_for(self, axes: Seq[str]) -> Axes:
        if self.input_axes_ == self.output_axes_:
            return tuple(axes)
        return super().output_axes_for(axes)

    def own_matrix(self) -> np.ndarray:
        m = np.zeros((len(self.output_axes_) + 1, len(self.input_axes_) + 1))
        for k, i in enumerate(self.map_axis):
            m[k, i] = 1.0
        m[-1, -1] = 1.0
        return m

    def inverse(self) -> MapAxis:
        if sorted(self.map_axis) != list(range(len(self.input_axes_))):
            raise TransformError(f"{self!r}: not a permutation of its input axes, no inverse")
        inv = [self.map_axis.index(i) for i in range(len(self.input_axes_))]
        return MapAxis(inv, self.output_axes_, self.input_axes_)

    def _params(self) -> tuple:
        return (self.map_axis, self.input_axes_, self.output_axes_)
