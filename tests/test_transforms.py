"""Transform classes: inverses, composition, JSON round trips (property tests) and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spatialflow as sf
from spatialflow.transforms import (
    Affine,
    Bijection,
    ByDimension,
    Identity,
    InverseOf,
    MapAxis,
    Rotation,
    Scale,
    Sequence,
    Translation,
)
from spatialflow.transforms.ngff import (
    from_ngff,
    from_spatialdata_dict,
    to_ngff,
    to_spatialdata_dict,
)

XY = ("x", "y")
XYZ = ("x", "y", "z")

finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
factor = st.floats(0.2, 5).flatmap(lambda v: st.sampled_from([v, -v]))
angle = st.floats(0, 2 * np.pi)


@st.composite
def axes(draw):
    return draw(st.sampled_from([XY, XYZ]))


@st.composite
def linear(draw, ax):
    d = len(ax)
    a = draw(angle)
    rot = np.eye(d)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    shear = np.eye(d)
    shear[0, 1] = draw(st.floats(-1, 1))
    scale = np.diag([draw(factor) for _ in range(d)])
    return rot @ shear @ scale


@st.composite
def invertible(draw, ax=None, depth=0):
    ax = ax or draw(axes())
    d = len(ax)
    kinds = [
        "identity",
        "translation",
        "scale",
        "affine",
        "rotation",
        "mapAxis",
        "bijection",
        "byDimension",
        "inverseOf",
    ] + (["sequence"] if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "identity":
        return Identity()
    if kind == "translation":
        return Translation([draw(finite) for _ in range(d)], ax)
    if kind == "scale":
        return Scale([draw(factor) for _ in range(d)], ax)
    if kind == "affine":
        m = np.hstack([draw(linear(ax)), np.array([[draw(finite)] for _ in range(d)])])
        return Affine(m, ax, ax)
    if kind == "rotation":
        r = draw(linear(ax))  # not orthonormal in general: inverted as a matrix
        return Rotation(r, ax)
    if kind == "mapAxis":
        perm = draw(st.permutations(list(range(d))))
        return MapAxis(perm, ax, ax)
    if kind == "bijection":
        fwd = draw(invertible(ax, depth + 1))
        return Bijection(fwd, fwd.inverse())
    if kind == "byDimension":
        return ByDimension(
            [
                (Scale([draw(factor)], ax[:1]), ax[:1], ax[:1]),
                (Translation([draw(finite)] * (d - 1), ax[1:]), ax[1:], ax[1:]),
            ]
        )
    if kind == "inverseOf":
        return InverseOf(draw(invertible(ax, depth + 1)))
    n = draw(st.integers(2, 3))
    return Sequence([draw(invertible(ax, depth + 1)) for _ in range(n)])


@st.composite
def case(draw):
    ax = draw(axes())
    t = draw(invertible(ax))
    n = draw(st.integers(1, 20))
    pts = np.array([[draw(finite) * 10 for _ in ax] for _ in range(n)])
    return ax, t, pts


@settings(max_examples=300, deadline=None)
@given(case())
def test_inverse_undoes_apply(c):
    ax, t, pts = c
    back = t.inverse().apply(t.apply(pts, ax, ax), ax, ax)
    np.testing.assert_allclose(back, pts, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(pts).max()))


@settings(max_examples=200, deadline=None)
@given(case(), st.data())
def test_composition_equals_sequential_application(c, data):
    ax, t1, pts = c
    t2 = data.draw(invertible(ax))
    seq = t1.then(t2).apply(pts, ax, ax)
    step = t2.apply(t1.apply(pts, ax, ax), ax, ax)
    np.testing.assert_allclose(seq, step, rtol=1e-9, atol=1e-9)
    simple = Sequence([t1, t2]).simplify()
    np.testing.assert_allclose(simple.apply(pts, ax, ax), step, rtol=1e-9, atol=1e-9)


def test_linear_sequence_simplifies_to_one_affine():
    seq = Sequence([Scale([2.0, 3.0]), Translation([1.0, -1.0]), Rotation([[0, -1], [1, 0]])])
    simple = seq.simplify()
    assert isinstance(simple, Affine)
    pts = np.array([[1.0, 2.0], [-3.0, 0.5]])
    np.testing.assert_allclose(simple.apply(pts, XY), seq.apply(pts, XY))
    assert Sequence([Identity(), Identity()]).simplify() == Identity()


@settings(max_examples=300, deadline=None)
@given(case())
def test_rfc5_json_round_trip(c):
    ax, t, pts = c
    d = to_ngff(t, input="in", output="out", input_axes=ax, output_axes=ax)
    back = from_ngff(d, coordinate_systems={"in": ax, "out": ax})
    assert type(back) is type(t)
    np.testing.assert_allclose(back.apply(pts, ax, ax), t.apply(pts, ax, ax), rtol=1e-12, atol=1e-9)
    if not isinstance(t, Sequence | InverseOf | Bijection | ByDimension):
        assert back == t


@settings(max_examples=300, deadline=None)
@given(case(), st.booleans())
def test_spatialdata_dialect_round_trip(c, raster):
    ax, t, pts = c
    element_axes = (("c", *tuple(reversed(ax)))) if raster else ax
    d = to_spatialdata_dict(t, element_axes, "global")
    assert d["output"]["name"] == "global"
    assert d["input"]["name"] == "".join(element_axes)
    for axis in d["input"]["axes"]:
        assert axis["type"] == ("channel" if axis["name"] == "c" else "space")
        assert axis.get("unit") == (None if axis["name"] == "c" else "unit")
    cs, back = from_spatialdata_dict(d)
    assert cs == "global"
    assert "c" not in back.input_axes
    np.testing.assert_allclose(back.apply(pts, ax, ax), t.apply(pts, ax, ax), rtol=1e-12, atol=1e-9)


def test_spatialdata_dialect_keeps_its_six_types():
    for t in [
        Identity(),
        Scale([2.0, 3.0]),
        Translation([1.0, 2.0]),
        Affine([[1, 2, 3], [4, 5, 6]]),
        MapAxis.from_names({"x": "y", "y": "x"}),
        Sequence([Scale([2.0, 3.0]), Translation([1.0, 2.0])]),
    ]:
        d = to_spatialdata_dict(t, XY, "global")
        assert d["type"] == t.type_name
        _, back = from_spatialdata_dict(d)
        assert back == t or (isinstance(t, Identity) and isinstance(back, Identity))
    # the others are written as the equivalent affine (spatialdata reads no other type)
    for t in [
        Rotation([[0, -1], [1, 0]]),
        Bijection(Scale([2.0, 2.0]), Scale([0.5, 0.5])),
        ByDimension([(Scale([2.0], "x"), ("x",), ("x",)), (Scale([3.0], "y"), ("y",), ("y",))]),
    ]:
        assert to_spatialdata_dict(t, XY, "global")["type"] == "affine"


def test_two_d_transform_leaves_z_untouched():
    pts = np.array([[1.0, 2.0, 7.0]])
    out = Affine([[0, 1, 5], [1, 0, 6]]).apply(pts, XYZ)
    np.testing.assert_allclose(out, [[7.0, 7.0, 7.0]])


def test_rotation_inverse_is_a_true_inverse_not_a_transpose():
    r = np.array([[0.0, -1.001], [0.999, 0.0]])
    t = Rotation(r)
    inv = t.inverse()
    np.testing.assert_allclose(inv.rotation, np.linalg.inv(r))
    assert not np.allclose(inv.rotation, r.T)


def test_bijection_uses_the_given_inverse():
    fwd, given_inv = Scale([2.0, 2.0]), Translation([10.0, 0.0])  # deliberately not inverse
    b = Bijection(fwd, given_inv)
    np.testing.assert_allclose(b.inverse().apply(np.array([[1.0, 1.0]]), XY), [[11.0, 1.0]])


def test_map_axis_forms():
    m = MapAxis.from_names({"x": "y", "y": "x"})
    np.testing.assert_allclose(m.apply(np.array([[1.0, 2.0]]), XY), [[2.0, 1.0]])
    assert m.as_names() == {"x": "y", "y": "x"}
    assert m.inverse().apply(m.apply(np.array([[1.0, 2.0]]), XY), XY).tolist() == [[1.0, 2.0]]


# --- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: from_ngff({"type": "warp"}), ["unknown transformation type", "warp"]),
        (lambda: Scale([1.0, 2.0], ("x", "y", "z")), ["Scale", "2 parameters but 3 axes"]),
        (lambda: Affine([[1, 0], [0, 1]], ("x", "y")), ["Affine", "needs 1 input axes"]),
        (lambda: Rotation([[1, 0, 0], [0, 1, 0]]), ["Rotation", "square"]),
        (lambda: Affine([[1, 2, 0], [2, 4, 0]]).inverse(), ["singular"]),
        (lambda: Scale([0.0, 1.0]).inverse(), ["Scale", "zero"]),
        (lambda: Affine([[1, 0, 0], [0, 1, 0], [1, 1, 0]], XY, XYZ).inverse(), ["inverse"]),
        (
            lambda: from_ngff(
                {"type": "scale", "scale": [1, 2, 3], "input": "a"}, coordinate_systems={"a": XY}
            ),
            ["3 values", "2 axes"],
        ),
        (lambda: from_ngff({"type": "displacements", "path": "d"}), ["not supported"]),
        (lambda: Translation([np.nan, 1.0]), ["finite"]),
    ],
)
def test_bad_transforms_raise_transform_error(make, words):
    with pytest.raises(sf.TransformError) as info:
        make()
    for w in words:
        assert w in str(info.value)
