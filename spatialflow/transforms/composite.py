"""Composite RFC-5 transformations: Sequence, ByDimension, Bijection and InverseOf.

They are built from the simple types of ``base.py`` and reduce, like them, to one homogeneous
matrix over their axes; a Sequence of linear steps simplifies to one Affine, a Bijection uses the
inverse it was given, and InverseOf is the inverse of the transform it wraps (read only).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq

import numpy as np

from spatialflow.errors import TransformError
from spatialflow.transforms.base import Affine, Axes, Identity, Transform

__all__ = ["Bijection", "ByDimension", "InverseOf", "Sequence"]


class Sequence(Transform):
    """Transforms applied in order."""

    type_name = "sequence"

    def __init__(self, transformations: Iterable[Transform]) -> None:
        ts = list(transformations)
        for t in ts:
            if not isinstance(t, Transform):
                raise TransformError(f"Sequence: {t!r} is not a Transform")
        self.transformations = ts

    def _chain(self, axes: Axes) -> list[tuple[Transform, Axes, Axes]]:
        steps = []
        cur = axes
        for t in self.transformations:
            nxt = t.output_axes_for(cur)
            steps.append((t, cur, nxt))
            cur = nxt
        return steps

    @property
    def input_axes(self) -> Axes:
        axes: list[str] = []
        produced: set[str] = set()
        for t in self.transformations:
            axes += [a for a in t.input_axes if a not in produced and a not in axes]
            produced |= set(t.output_axes)
        return tuple(axes)

    @property
    def output_axes(self) -> Axes:
        axes = self.input_axes
        for t in self.transformations:
            axes = t.output_axes_for(axes)
        return axes

    def output_axes_for(self, axes: Seq[str]) -> Axes:
        cur = tuple(axes)
        for t in self.transformations:
            cur = t.output_axes_for(cur)
        return cur

    def to_affine_matrix(self, input_axes: Seq[str], output_axes: Seq[str]) -> np.ndarray:
        cur = tuple(input_axes)
        m = np.eye(len(cur) + 1)
        for t in self.transformations:
            nxt = t.output_axes_for(cur)
            m = t.to_affine_matrix(cur, nxt) @ m
            cur = nxt
        return Identity().to_affine_matrix(cur, tuple(output_axes)) @ m

    def own_matrix(self) -> np.ndarray:
        return self.to_affine_matrix(self.input_axes, self.output_axes)

    def inverse(self) -> Sequence:
        return Sequence([t.inverse() for t in reversed(self.transformations)])

    def simplify(self) -> Transform:
        ts = [t.simplify() for t in self.transformations]
        flat: list[Transform] = []
        for t in ts:
            flat.extend(t.transformations if isinstance(t, Sequence) else [t])
        flat = [t for t in flat if not isinstance(t, Identity)]
        if not flat:
            return Identity()
        if len(flat) == 1:
            return flat[0]
        if any(isinstance(t, Bijection) for t in flat):
            return Sequence(flat)  # keep the given inverses
        seq = Sequence(flat)
        return Affine(seq.own_matrix(), seq.input_axes, seq.output_axes)

    def _params(self) -> tuple:
        return (self.transformations,)


class ByDimension(Transform):
    """Sub-transforms that each act on a subset of the axes."""

    type_name = "byDimension"

    def __init__(self, parts: Iterable[tuple[Transform, Seq[str], Seq[str]]]) -> None:
        self.parts: list[tuple[Transform, Axes, Axes]] = []
        seen_out: set[str] = set()
        for part in parts:
            t, ia, oa = part
            ia, oa = tuple(ia), tuple(oa)
            if not isinstance(t, Transform):
                raise TransformError(f"ByDimension: {t!r} is not a Transform")
            mat = t.own_matrix()
            if mat.shape != (len(oa) + 1, len(ia) + 1):
                raise TransformError(
                    f"ByDimension: {t!r} maps {mat.shape[1] - 1} -> {mat.shape[0] - 1} axes but "
                    f"input_axes {ia} and output_axes {oa} were given"
                )
            if seen_out & set(oa):
                raise TransformError(
                    f"ByDimension: output axes {sorted(seen_out & set(oa))} "
                    "are produced by more than one part"
                )
            seen_out |= set(oa)
            self.parts.append((t, ia, oa))
        if not self.parts:
            raise TransformError("ByDimension: needs at least one part")

    @property
    def input_axes(self) -> Axes:
        return tuple(dict.fromkeys(a for _, ia, _ in self.parts for a in ia))

    @property
    def output_axes(self) -> Axes:
        return tuple(a for _, _, oa in self.parts for a in oa)

    def own_matrix(self) -> np.ndarray:
        ins, outs = self.input_axes, self.output_axes
        m = np.zeros((len(outs) + 1, len(ins) + 1))
        m[-1, -1] = 1.0
        for t, ia, oa in self.parts:
            sub = t.own_matrix()
            for r, o in enumerate(oa):
                k = outs.index(o)
                for c, a in enumerate(ia):
                    m[k, ins.index(a)] += sub[r, c]
                m[k, -1] = sub[r, -1]
        return m

    def inverse(self) -> ByDimension:
        return ByDimension([(t.inverse(), oa, ia) for t, ia, oa in self.parts])

    def _params(self) -> tuple:
        return (self.parts,)


class Bijection(Transform):
    """A forward transform with an explicitly given inverse (used as is, never recomputed)."""

    type_name = "bijection"

    def __init__(self, forward: Transform, inverse: Transform) -> None:
        if not isinstance(forward, Transform) or not isinstance(inverse, Transform):
            raise TransformError("Bijection: forward and inverse must both be transforms")
        self.forward = forward
        self.inverse_ = inverse

    input_axes = property(lambda self: self.forward.input_axes)  # type: ignore[assignment]
    output_axes = property(lambda self: self.forward.output_axes)  # type: ignore[assignment]

    def output_axes_for(self, axes: Seq[str]) -> Axes:
        return self.forward.output_axes_for(axes)

    def to_affine_matrix(self, input_axes: Seq[str], output_axes: Seq[str]) -> np.ndarray:
        return self.forward.to_affine_matrix(input_axes, output_axes)

    def own_matrix(self) -> np.ndarray:
        return self.forward.own_matrix()

    def inverse(self) -> Bijection:
        return Bijection(self.inverse_, self.forward)

    def _params(self) -> tuple:
        return (self.forward, self.inverse_)


class InverseOf(Transform):
    """The inverse of another transform (RFC-5 ``inverseOf``; read from files)."""

    type_name = "inverseOf"

    def __init__(self, transformation: Transform) -> None:
        if not isinstance(transformation, Transform):
            raise TransformError("InverseOf: needs a transform")
        self.transformation = transformation

    def _resolved(self) -> Transform:
        return self.transformation.inverse()

    input_axes = property(lambda self: self.transformation.output_axes)  # type: ignore[assignment]
    output_axes = property(lambda self: self.transformation.input_axes)  # type: ignore[assignment]

    def output_axes_for(self, axes: Seq[str]) -> Axes:
        return self._resolved().output_axes_for(axes)

    def to_affine_matrix(self, input_axes: Seq[str], output_axes: Seq[str]) -> np.ndarray:
        return self._resolved().to_affine_matrix(input_axes, output_axes)

    def own_matrix(self) -> np.ndarray:
        return self._resolved().own_matrix()

    def inverse(self) -> Transform:
        return self.transformation

    def simplify(self) -> Transform:
        return self._resolved().simplify()

    def _params(self) -> tuple:
        return (self.transformation,)
