"""Pairwise registration of two overlapping windows: an FFT normalized cross-correlation (NCC)
search over the stage-predicted lags, a peak-distinctiveness test and sub-pixel refinement.
Pure numpy/scipy, n-dimensional.

Design decisions:

* Convention: ``a[p] ~ b[p - lag]`` -- the content at index ``q`` of window ``b`` sits at index
  ``q + lag`` of window ``a``. Callers give the stage-predicted lag and a search radius
  (``max_shift``); only lags within it are considered, so an empty window can never be "found"
  far away.
* Both windows are band-passed (difference of Gaussians) first: smooth background correlates at
  every lag.
* The lag is chosen on the exact NCC of the two windows' common region at *every* searched
  integer lag, computed with FFTs: one cross-correlation (real FFTs, zero-padded to the sum of
  the sizes, so linear) for the cross term, summed-area tables for the per-lag sums and sums of
  squares of each side. Classic phase correlation (and plain cross-correlation) of overlap
  strips is biased toward lags with a larger common region: on narrow strips (small tiles) its
  highest peaks were often not the true lag at all, and verifying only its top few peaks by
  NCC could not recover it.
* The score of a lag weighs its correlation by the evidence: ``atanh(ncc) * sqrt(n)`` (n common
  pixels; the Fisher z-statistic up to a constant), so a high NCC on a sliver of overlap does not
  beat a slightly lower one on the full overlap. Lags whose common region is below
  ``min_overlap_fraction`` of the stage-predicted one are not considered.
* Distinctiveness: ``ambiguity`` is the score of the best other local maximum (more than
  ``exclusion`` px away) over the best score. A real match in structured tissue gives a sharp
  peak (ambiguity well below 0.5); noise, empty or repetitive overlaps give several similar
  peaks (ambiguity near 1). Callers reject ambiguous pairs as well as low-quality ones.
* Narrow overlaps (small tiles): a band-pass applied to whole windows differs between the two
  sides near the tile edges (one side's filter sees content the other lacks), which moved the
  map's peak by 1-2 px even on noise-free data. So the top ``candidates`` distinct peaks of the
  map are re-scored on a +-``radius`` neighbourhood with both sides cut to the common region
  *first* and then band-passed alike (:func:`_crop_score`); the best re-scored lag wins. The
  map only proposes; quality (NCC) and ambiguity come from the re-scoring (ambiguity: the
  larger of the map's and the re-scoring's). Overlaps at least ``wide`` (64) px across in every
  axis skip the re-scoring: there the edge effect is negligible.
* Sub-pixel: least squares in the spatial domain (:func:`refine_shift`) on the cut and
  band-passed common region, falling back to a parabola through the re-scored NCC when the
  fit leaves the peak by more than a pixel (weak structure).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

__all__ = [
    "PairMeasurement",
    "highpass",
    "measure_shift",
    "ncc",
    "ncc_map",
    "refine_shift",
    "register_pair",
    "register_windows",
]


@dataclass(frozen=True)
class PairMeasurement:
    """The result of registering one pair of windows."""

    lag: np.ndarray  # sub-pixel lag (a[p] ~ b[p - lag]), window pixels, array axis order
    quality: float  # NCC of the common region at the integer lag, in [-1, 1]
    overlap: int  # pixels in the common region at that lag
    at_limit: bool  # the peak lies on the border of the search region
    ambiguity: float = 1.0  # best other peak's score / the best score (see the module doc)


def highpass(x: np.ndarray, fine: float = 1.0, coarse: float = 8.0) -> np.ndarray:
    """Difference of Gaussians: keeps the structure between ``fine`` and ``coarse`` pixels.
    Smooth background (tissue density, illumination) correlates at *every* lag, so without
    this both the peak search and the NCC quality would reward it."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(x)
    out = gaussian_filter(x, fine, output=np.float64, mode="reflect")
    out -= gaussian_filter(x, coarse, output=np.float64, mode="reflect")
    return out


def ncc(a: np.ndarray, b: np.ndarray, lag: np.ndarray) -> tuple[float, int]:
    """Pearson correlation of ``a[p]`` and ``b[p - lag]`` over their common region (integer
    ``lag``); returns (ncc, number of common pixels). 0 when either side is constant."""
    lag = np.asarray(np.round(lag), dtype=int)
    sa, sb = [], []
    for n_a, n_b, k in zip(a.shape, b.shape, lag, strict=True):
        lo, hi = max(0, k), min(n_a, n_b + k)
        if hi - lo <= 0:
            return 0.0, 0
        sa.append(slice(lo, hi))
        sb.append(slice(lo - k, hi - k))
    x = np.asarray(a[tuple(sa)], dtype=np.float64).ravel()
    y = np.asarray(b[tuple(sb)], dtype=np.float64).ravel()
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if den <= 0 or not np.isfinite(den):
        return 0.0, int(x.size)
    return float(np.dot(x, y) / den), int(x.size)


def _box_sums(
    x: np.ndarray, lags: list[np.ndarray], other: tuple[int, ...], *, square: bool = False
) -> np.ndarray:
    """For every lag of the grid ``lags`` (one 1D array per axis): the sum of ``x`` (of ``x**2``
    with ``square``) over its part of the common region with a window of shape ``other`` placed
    at that lag, by a summed-area table (inclusion-exclusion over the box corners)."""
    d = x.ndim
    table = np.zeros(tuple(n + 1 for n in x.shape))
    inner = table[(slice(1, None),) * d]
    if square:
        np.square(x, out=inner)
    else:
        inner[...] = x
    for ax in range(d):
        np.cumsum(table, axis=ax, out=table)
    lo = [np.clip(lg, 0, n) for lg, n in zip(lags, x.shape, strict=True)]
    hi = [np.clip(m + lg, 0, n) for lg, m, n in zip(lags, other, x.shape, strict=True)]
    out = np.zeros(tuple(len(lg) for lg in lags))
    for corner in itertools.product((0, 1), repeat=d):
        idx = np.ix_(*[(hi if c else lo)[ax] for ax, c in enumerate(corner)])
        out += (-1.0) ** (d - sum(corner)) * table[idx]
    return out


def ncc_map(a: np.ndarray, b: np.ndarray, lags: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The NCC of ``a[p]`` and ``b[p - lag]`` over their common region, and that region's pixel
    count, for every lag of the grid ``lags`` (one 1D integer array per axis). NCC is 0 where a
    side is constant or the region is empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    # a circular correlation equals the linear one at every lag |l| <= L once both sides are
    # zero-padded to max(na, nb) + L: the searched lags need no more (na + nb for all lags)
    shape = tuple(
        sfft.next_fast_len(int(min(na + nb, max(na, nb) + int(np.max(np.abs(lg), initial=0)))))
        for na, nb, lg in zip(a.shape, b.shape, lags, strict=True)
    )
    spec = sfft.rfftn(a, shape)  # the spectra are the task's largest arrays: one at a time
    other_spec = sfft.rfftn(b, shape)
    np.conjugate(other_spec, out=other_spec)
    spec *= other_spec
    del other_spec
    cross = sfft.irfftn(spec, shape, overwrite_x=True)
    del spec
    s_ab = cross[np.ix_(*[lg % n for lg, n in zip(lags, shape, strict=True)])]
    del cross
    count = np.ones(())
    for lg, na, nb in zip(lags, a.shape, b.shape, strict=True):
        c = np.clip(np.minimum(na, nb + lg) - np.maximum(0, lg), 0, None).astype(np.float64)
        count = np.multiply.outer(count, c)
    neg = [-lg for lg in lags]
    s_a, s_aa = _box_sums(a, lags, b.shape), _box_sums(a, lags, b.shape, square=True)
    s_b, s_bb = _box_sums(b, neg, a.shape), _box_sums(b, neg, a.shape, square=True)
    n = np.maximum(count, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = s_ab - s_a * s_b / n
        var = (s_aa - s_a * s_a / n) * (s_bb - s_b * s_b / n)
        r = cov / np.sqrt(var)
    tiny = 1e-12 * max(float(np.max(np.abs(var))) if var.size else 0.0, 1e-300)
    r[~np.isfinite(r) | (count < 2) | (var <= tiny)] = 0.0
    return np.clip(r, -1.0, 1.0), count


def _local_maxima(score: np.ndarray) -> np.ndarray:
    """Indices (k, d) of the local maxima (3^d neighbourhood) of ``score``, best first;
    -inf marks lags that are not candidates."""
    from scipy.ndimage import maximum_filter

    top = maximum_filter(score, size=3, mode="constant", cval=-np.inf)
    idx = np.argwhere(np.isfinite(score) & (score >= top))
    return idx[np.argsort(score[tuple(idx.T)])[::-1]]


def _parabolic(r: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    """Sub-pixel offset of the peak at ``idx`` of ``r`` by a parabola per axis."""
    off = np.zeros(len(idx))
    for ax, i in enumerate(idx):
        if 0 < i < r.shape[ax] - 1:
            lo = list(idx)
            hi = list(idx)
            lo[ax], hi[ax] = i - 1, i + 1
            y0, y1, y2 = r[tuple(lo)], r[idx], r[tuple(hi)]
            den = y0 - 2 * y1 + y2
            if den < 0:
                off[ax] = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
    return off


def _common_slices(
    shape_a: tuple[int, ...],
    shape_b: tuple[int, ...],
    lag: np.ndarray,
    max_pixels: float = np.inf,
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """The common region of ``a[p]`` and ``b[p - lag]`` (integer lag) in each window, cut to
    its central part along the longest sides while it exceeds ``max_pixels``."""
    lo = [max(0, int(k)) for k in lag]
    hi = [min(n_a, n_b + int(k)) for n_a, n_b, k in zip(shape_a, shape_b, lag, strict=True)]
    if any(h - lo_ < 3 for lo_, h in zip(lo, hi, strict=True)):
        return None
    while np.prod(np.subtract(hi, lo)) > max_pixels:
        ax = int(np.argmax(np.subtract(hi, lo)))
        n = hi[ax] - lo[ax]
        lo[ax], hi[ax] = lo[ax] + n // 4, hi[ax] - n // 4
    sa = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sb = tuple(slice(a - int(k), b - int(k)) for a, b, k in zip(lo, hi, lag, strict=True))
    return sa, sb


def _crop_score(
    a: np.ndarray, b: np.ndarray, lag: np.ndarray, max_pixels: int = 1 << 16
) -> tuple[float, int]:
    """NCC of the band-passed common region at integer ``lag``, each side cut to that region
    *before* filtering, so both are filtered with the same boundaries (band-passing whole
    windows first biases narrow overlaps: near a tile edge one side's filter sees content the
    other side lacks). Large regions are scored on their central ``max_pixels``."""
    cut = _common_slices(a.shape, b.shape, lag, max_pixels=max_pixels)
    if cut is None:
        return 0.0, 0
    return ncc(highpass(a[cut[0]]), highpass(b[cut[1]]), np.zeros(a.ndim))


def measure_shift(
    a: np.ndarray,
    b: np.ndarray,
    expected: np.ndarray,
    max_shift: np.ndarray,
    *,
    min_overlap_fraction: float = 0.25,
    exclusion: int = 3,
    candidates: int = 3,
    radius: int = 2,
    wide: float = 64.0,
) -> PairMeasurement:
    """Register window ``b`` to window ``a`` to an integer lag plus a parabolic sub-pixel
    estimate (see the module doc for the convention and the score)."""
    raw_a, raw_b = np.asarray(a), np.asarray(b)  # as given: _crop_score converts its cuts
    a, b = highpass(raw_a), highpass(raw_b)
    d = a.ndim
    expected = np.asarray(expected, dtype=np.float64).reshape(d)
    max_shift = np.broadcast_to(np.asarray(max_shift, dtype=np.float64), (d,))
    none = PairMeasurement(expected.copy(), 0.0, 0, True)
    lags = []
    for ax in range(d):
        lo = int(np.floor(expected[ax] - max_shift[ax]))
        hi = int(np.ceil(expected[ax] + max_shift[ax]))
        lo, hi = max(lo, -b.shape[ax] + 1), min(hi, a.shape[ax] - 1)
        if hi < lo:
            return none
        lags.append(np.arange(lo, hi + 1))
    r, count = ncc_map(a, b, lags)
    predicted = np.prod(
        [
            np.clip(min(na, nb + e) - max(0.0, e), 0, None)
            for na, nb, e in zip(a.shape, b.shape, expected, strict=True)
        ]
    )
    need = max(min_overlap_fraction * predicted, 2.0**d)
    with np.errstate(invalid="ignore"):
        score = np.arctanh(np.clip(r, -0.999, 0.999)) * np.sqrt(count)
    score[count < need] = -np.inf
    peaks = _local_maxima(score)
    if len(peaks) == 0 or score[tuple(peaks[0])] <= 0:
        return none
    far = np.max(np.abs(peaks[1:] - peaks[0]), axis=1) > exclusion
    second = float(score[tuple(peaks[1:][far][0])]) if np.any(far) else 0.0
    ambiguity = float(np.clip(second / score[tuple(peaks[0])], 0.0, 1.0))
    narrow = min(
        min(na, nb + e) - max(0.0, e) for na, nb, e in zip(a.shape, b.shape, expected, strict=True)
    )
    if narrow >= wide:  # the band-pass edge effect is negligible: the map's peak stands
        top = tuple(int(v) for v in peaks[0])
        lag = np.array([lags[ax][i] for ax, i in enumerate(top)], dtype=np.float64)
        at_limit = bool(np.any(np.abs(lag - expected) >= max_shift - 1.0))
        fine = lag + _parabolic(r, top)
        return PairMeasurement(fine, float(r[top]), int(count[top]), at_limit, ambiguity)
    # the distinct top peaks of the map, each re-scored around it on cut-then-filtered regions
    chosen: list[np.ndarray] = []
    for pk in peaks:
        if all(np.max(np.abs(pk - c)) > exclusion for c in chosen):
            chosen.append(pk)
            if len(chosen) == candidates:
                break
    lo_lag = np.array([lg[0] for lg in lags])
    hi_lag = np.array([lg[-1] for lg in lags])
    offsets = np.array(list(itertools.product(range(-radius, radius + 1), repeat=d)))
    scored: dict[tuple[int, ...], tuple[float, float, int]] = {}
    for c in chosen:
        centre = lo_lag + c
        for off in offsets:
            lag = centre + off
            key = tuple(int(v) for v in lag)
            if key in scored or np.any(lag < lo_lag) or np.any(lag > hi_lag):
                continue
            q, n = _crop_score(raw_a, raw_b, lag)
            z = float(np.arctanh(np.clip(q, -0.999, 0.999)) * np.sqrt(n)) if n >= need else -np.inf
            scored[key] = (z, q, n)
    best = max(scored, key=lambda k: scored[k][0])
    z_best, q, n = scored[best]
    if not z_best > 0:
        return none
    lag = np.array(best, dtype=np.float64)
    others = [v[0] for k, v in scored.items() if np.max(np.abs(np.subtract(k, best))) > exclusion]
    if others:
        ambiguity = max(ambiguity, float(np.clip(max(others) / z_best, 0.0, 1.0)))
    # a parabola through the re-scored neighbours of the best lag
    grid = np.full((3,) * d, -1.0)
    for off in itertools.product((-1, 0, 1), repeat=d):
        v = scored.get(tuple(int(x + o) for x, o in zip(best, off, strict=True)))
        if v is not None:
            grid[tuple(o + 1 for o in off)] = v[1]
    fine = lag + _parabolic(grid, (1,) * d)
    at_limit = bool(np.any(np.abs(lag - expected) >= max_shift - 1.0))
    return PairMeasurement(fine, float(q), int(n), at_limit, ambiguity)


def refine_shift(
    a: np.ndarray,
    b: np.ndarray,
    lag0: np.ndarray,
    *,
    iters: int = 12,
    tol: float = 1e-3,
    max_pixels: int = 1 << 18,
    smooth: float = 1.0,
    margin: int = 2,
) -> np.ndarray | None:
    """Sub-pixel refinement of ``lag0`` by least squares in the spatial domain (Lucas-Kanade):
    ``a[p] ~ gain * b(p - lag) + offset`` with ``b`` interpolated by cubic splines, Gauss-Newton
    over (lag, gain, offset) on the common region (its central ``max_pixels`` at most: 2^18
    pixels fix a lag to ~0.001 px, and the spline sampling costs per pixel), both windows
    smoothed by a Gaussian of ``smooth`` px first (noise). None if it does not converge near
    ``lag0``."""
    from scipy import ndimage
    from scipy.ndimage import gaussian_filter

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if smooth > 0:
        a, b = gaussian_filter(a, smooth), gaussian_filter(b, smooth)
    d = a.ndim
    base = np.round(lag0).astype(int)
    sl = []
    for n_a, n_b, k in zip(a.shape, b.shape, base, strict=True):
        m = margin  # away from both windows' edges (smoothing, spline support)
        lo, hi = max(m, k + m), min(n_a - m, n_b + k - m)
        if hi - lo < 4:
            return None
        sl.append(slice(lo, hi))
    while np.prod([s.stop - s.start for s in sl]) > max_pixels:  # crop the longest side
        ax = int(np.argmax([s.stop - s.start for s in sl]))
        n = sl[ax].stop - sl[ax].start
        sl[ax] = slice(sl[ax].start + n // 4, sl[ax].stop - n // 4)
    target = a[tuple(sl)].ravel()
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in sl], indexing="ij")
    pts = np.stack([g.ravel() for g in grids])  # (d, n)
    coef = ndimage.spline_filter(b, order=3, mode="mirror")
    lag = np.asarray(lag0, dtype=np.float64).copy()

    def sample(offset: np.ndarray) -> np.ndarray:
        q = pts - (lag + offset)[:, None]
        return ndimage.map_coordinates(coef, q, order=3, prefilter=False, mode="mirror")

    for _ in range(iters):
        bv = sample(np.zeros(d))
        grads = []
        for ax in range(d):
            e = np.zeros(d)
            e[ax] = 0.5
            grads.append(sample(e) - sample(-e))  # d b(p - lag) / d lag = -grad b
        jac = np.stack([*grads, bv, np.ones_like(bv)], axis=1)
        try:  # normal equations: a 4x4 solve instead of a QR of the (n, 4) Jacobian
            step = np.linalg.solve(jac.T @ jac, jac.T @ (target - bv))
        except np.linalg.LinAlgError:
            step, *_ = np.linalg.lstsq(jac, target - bv, rcond=None)
        delta = step[:d]
        lag += delta
        if np.max(np.abs(lag - lag0)) > 2.0 or not np.all(np.isfinite(lag)):
            return None
        if np.max(np.abs(delta)) < tol:
            break
    return lag


def register_windows(
    a: np.ndarray,
    b: np.ndarray,
    expected: np.ndarray,
    max_shift: np.ndarray,
) -> PairMeasurement:
    """Register window ``b`` to window ``a``: :func:`measure_shift` over ``expected +-
    max_shift``, then :func:`refine_shift` on the common region at that integer lag, both
    sides cut first and band-passed alike (on raw windows the smooth background dominates the
    fit and noise moved weakly structured pairs by 1-2 px). A refinement that leaves the
    correlation peak by more than a pixel is not trusted (the parabolic estimate stays)."""
    a, b = np.asarray(a), np.asarray(b)  # any dtype: the band-pass converts what it cuts
    first = measure_shift(a, b, expected, max_shift)
    if first.overlap == 0:
        return first
    base = np.round(first.lag)
    cut = _common_slices(a.shape, b.shape, base)
    if cut is None:
        return first
    fine = refine_shift(
        highpass(a[cut[0]]), highpass(b[cut[1]]), np.zeros(a.ndim), smooth=0.0, margin=1
    )
    if fine is None or np.max(np.abs(base + fine - first.lag)) > 1.0:
        return first
    return PairMeasurement(
        base + fine, first.quality, first.overlap, first.at_limit, first.ambiguity
    )


def register_pair(
    a: np.ndarray,
    b: np.ndarray,
    expected: np.ndarray,
    max_shift: np.ndarray,
    *,
    resample: np.ndarray | None = None,
) -> PairMeasurement:
    """:func:`register_windows`, after resampling ``b`` onto ``a``'s grid when ``resample``
    (homogeneous: a-window index -> b-window index) is given; points outside ``b`` take
    ``b``'s mean (they carry no structure)."""
    a, b = np.asarray(a), np.asarray(b)
    if resample is not None:
        from scipy.ndimage import map_coordinates

        b = b.astype(np.float64, copy=False)
        d = a.ndim
        grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in a.shape], indexing="ij")
        pts = np.stack([g.ravel() for g in grids])
        q = resample[:d, :d] @ pts + resample[:d, d : d + 1]
        fill = float(b.mean()) if b.size else 0.0
        b = map_coordinates(b, q, order=1, mode="constant", cval=fill).reshape(a.shape)
    if a.size == 0 or b.size == 0:
        return PairMeasurement(np.asarray(expected, dtype=np.float64), 0.0, 0, True)
    return register_windows(a, b, expected, max_shift)
