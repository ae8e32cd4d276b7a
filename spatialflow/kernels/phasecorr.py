"""Pairwise registration of two overlapping windows: phase correlation, sub-pixel refinement and
a normalized cross-correlation (NCC) quality score. Pure numpy (numpy.fft), n-dimensional.

Design decisions:

* Convention: ``a[p] ~ b[p - lag]`` -- the content at index ``q`` of window ``b`` sits at index
  ``q + lag`` of window ``a``. Callers give the stage-predicted lag and a search radius
  (``max_shift``); only lags within it are considered, so an empty window can never be "found"
  far away.
* Both windows are mean-subtracted, tapered (Tukey) and zero-padded to at least the sum of their
  sizes, so the correlation is linear (no wrap-around ambiguity) and windows of different sizes
  (overlap plus a margin, clipped to each tile) are fine.
* The cross-power spectrum is partially whitened (divided by ``|F|**alpha``, alpha 0.5): full
  whitening (classic phase correlation) amplifies the noise-only high frequencies and degrades
  sub-pixel accuracy; no whitening gives broad peaks. Several peaks are taken (non-maximum
  suppression) and the one whose overlap has the highest NCC wins (BigStitcher-style peak
  verification), then the peak is refined by evaluating the inverse DFT on an upsampled grid
  around it (Guizar-Sicairos' matrix-multiply DFT), giving ``1/upsample`` pixel resolution.
* Quality is the Pearson correlation (NCC) of the two windows' common region at the chosen
  integer lag; callers reject pairs below a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

__all__ = [
    "PairMeasurement",
    "highpass",
    "measure_shift",
    "ncc",
    "refine_shift",
    "register_pair",
    "register_windows",
    "tukey",
]


@dataclass(frozen=True)
class PairMeasurement:
    """The result of registering one pair of windows."""

    lag: np.ndarray  # sub-pixel lag (a[p] ~ b[p - lag]), window pixels, array axis order
    quality: float  # NCC of the common region at the integer lag, in [-1, 1]
    overlap: int  # pixels in the common region at that lag
    at_limit: bool  # the peak lies on the border of the search region


def tukey(n: int, frac: float = 0.2) -> np.ndarray:
    """A Tukey (tapered cosine) window of length ``n``: flat, cosine edges of ``frac * n / 2``."""
    if n < 3 or frac <= 0:
        return np.ones(n)
    w = np.ones(n)
    edge = max(1, int(frac * n / 2))
    ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(edge) + 0.5) / edge))
    w[:edge] = ramp
    w[n - edge :] = ramp[::-1]
    return w


def highpass(x: np.ndarray, fine: float = 1.0, coarse: float = 8.0) -> np.ndarray:
    """Difference of Gaussians: keeps the structure between ``fine`` and ``coarse`` pixels.
    Smooth background (tissue density, illumination) correlates at *every* lag, so without
    this both the peak search and the NCC quality would reward it."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(x, dtype=np.float64)
    return gaussian_filter(x, fine, mode="reflect") - gaussian_filter(x, coarse, mode="reflect")


def _prepare(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    for ax, n in enumerate(x.shape):
        sh = [1] * x.ndim
        sh[ax] = n
        x = x * tukey(n).reshape(sh)
    out = np.zeros(shape)
    out[tuple(slice(0, n) for n in x.shape)] = x
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


def _peaks(region: np.ndarray, n: int, radius: int = 2) -> list[tuple[int, ...]]:
    """Up to ``n`` highest local maxima of ``region`` at least ``radius`` apart (greedy)."""
    order = np.argsort(region, axis=None)[::-1]
    found: list[np.ndarray] = []
    for flat in order[: max(64, 16 * n)]:
        idx = np.array(np.unravel_index(flat, region.shape))
        if all(np.max(np.abs(idx - f)) > radius for f in found):
            found.append(idx)
            if len(found) == n:
                break
    return [tuple(int(v) for v in f) for f in found]


def _upsampled_peak(spec: np.ndarray, lag: np.ndarray, upsample: int) -> np.ndarray:
    """Refine an integer ``lag`` by evaluating the inverse DFT of ``spec`` on a grid of
    1/``upsample`` pixel spacing spanning +-0.75 pixel around it."""
    m = int(np.ceil(upsample * 1.5)) | 1
    offs = (np.arange(m) - m // 2) / upsample
    out = spec
    for ax, n in enumerate(spec.shape):
        freqs = sfft.fftfreq(n)
        ker = np.exp(2j * np.pi * np.outer(lag[ax] + offs, freqs))  # (m, n)
        out = np.moveaxis(np.tensordot(ker, np.moveaxis(out, ax, 0), axes=(1, 0)), 0, ax)
    mag = np.abs(out)
    best = np.array(np.unravel_index(int(np.argmax(mag)), mag.shape))
    return lag + offs[best]


def measure_shift(
    a: np.ndarray,
    b: np.ndarray,
    expected: np.ndarray,
    max_shift: np.ndarray,
    *,
    upsample: int = 20,
    n_peaks: int = 3,
    alpha: float = 0.5,
    min_overlap_fraction: float = 0.25,
) -> PairMeasurement:
    """Register window ``b`` to window ``a`` (see the module doc for the convention)."""
    a = highpass(a)
    b = highpass(b)
    d = a.ndim
    expected = np.asarray(expected, dtype=np.float64).reshape(d)
    max_shift = np.broadcast_to(np.asarray(max_shift, dtype=np.float64), (d,))
    shape = tuple(sfft.next_fast_len(int(na + nb)) for na, nb in zip(a.shape, b.shape, strict=True))
    fa = sfft.fftn(_prepare(a, shape))
    fb = sfft.fftn(_prepare(b, shape))
    cross = fa * np.conj(fb)
    mag = np.abs(cross)
    scale = mag.max() * 1e-12 + 1e-300
    cross = cross / np.power(mag + scale, alpha)
    corr = sfft.ifftn(cross).real
    # the lags searched: expected +- max_shift, limited to lags with any common region
    ranges = []
    for ax in range(d):
        lo = int(np.floor(expected[ax] - max_shift[ax]))
        hi = int(np.ceil(expected[ax] + max_shift[ax]))
        lo, hi = max(lo, -b.shape[ax] + 1), min(hi, a.shape[ax] - 1)
        if hi < lo:
            return PairMeasurement(expected.copy(), 0.0, 0, True)
        ranges.append(np.arange(lo, hi + 1))
    region = corr[np.ix_(*[r % n for r, n in zip(ranges, shape, strict=True)])]
    need = min_overlap_fraction * min(a.size, b.size)
    best: tuple[float, int, np.ndarray] | None = None
    for idx in _peaks(region, n_peaks):
        lag = np.array([ranges[ax][i] for ax, i in enumerate(idx)], dtype=np.float64)
        q, n = ncc(a, b, lag)
        if n < need:
            continue
        if best is None or q > best[0]:
            best = (q, n, lag)
    if best is None:
        return PairMeasurement(expected.copy(), 0.0, 0, True)
    q, n, lag = best
    fine = _upsampled_peak(cross, lag, upsample)
    at_limit = bool(np.any(np.abs(lag - expected) >= max_shift - 1.0))
    return PairMeasurement(fine, q, n, at_limit)


def refine_shift(
    a: np.ndarray,
    b: np.ndarray,
    lag0: np.ndarray,
    *,
    iters: int = 12,
    tol: float = 1e-3,
    max_pixels: int = 1 << 20,
    smooth: float = 1.0,
) -> np.ndarray | None:
    """Sub-pixel refinement of ``lag0`` by least squares in the spatial domain (Lucas-Kanade):
    ``a[p] ~ gain * b(p - lag) + offset`` with ``b`` interpolated by cubic splines, Gauss-Newton
    over (lag, gain, offset) on the common region, both windows smoothed by a Gaussian of
    ``smooth`` px first (noise). None if it does not converge near ``lag0``."""
    from scipy import ndimage
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(np.asarray(a, dtype=np.float64), smooth)
    b = gaussian_filter(np.asarray(b, dtype=np.float64), smooth)
    d = a.ndim
    base = np.round(lag0).astype(int)
    sl = []
    for n_a, n_b, k in zip(a.shape, b.shape, base, strict=True):
        lo, hi = max(0, k + 3), min(n_a, n_b + k - 3)
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
        step, *_ = np.linalg.lstsq(jac, target - bv, rcond=None)
        delta = step[:d]
        lag += delta
        if np.max(np.abs(lag - lag0)) > 2.0 or not np.all(np.isfinite(lag)):
            return None
        if np.max(np.abs(delta)) < tol:
            break
    return lag


def _common(a: np.ndarray, b: np.ndarray, lag: np.ndarray) -> tuple[tuple[slice, ...], ...]:
    sa, sb = [], []
    for n_a, n_b, k in zip(a.shape, b.shape, lag, strict=True):
        lo, hi = max(0, int(k)), min(n_a, n_b + int(k))
        sa.append(slice(lo, max(lo, hi)))
        sb.append(slice(lo - int(k), max(lo, hi) - int(k)))
    return tuple(sa), tuple(sb)


def register_windows(
    a: np.ndarray,
    b: np.ndarray,
    expected: np.ndarray,
    max_shift: np.ndarray,
    *,
    alpha: float = 0.5,
) -> PairMeasurement:
    """Register window ``b`` to window ``a``: phase correlation over ``expected +- max_shift``
    (peaks verified by NCC), then :func:`refine_shift` on the common region. The spatial
    refinement matters for narrow overlap strips: there the Fourier peak of tapered, offset
    windows is biased by up to half a pixel, while the least-squares fit is not."""
    first = measure_shift(a, b, expected, max_shift, upsample=4, alpha=alpha)
    if first.overlap == 0:
        return first
    fine = refine_shift(a, b, first.lag)
    if fine is None:
        return first
    return PairMeasurement(fine, first.quality, first.overlap, first.at_limit)


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
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if resample is not None:
        from scipy.ndimage import map_coordinates

        d = a.ndim
        grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in a.shape], indexing="ij")
        pts = np.stack([g.ravel() for g in grids])
        q = resample[:d, :d] @ pts + resample[:d, d : d + 1]
        fill = float(b.mean()) if b.size else 0.0
        b = map_coordinates(b, q, order=1, mode="constant", cval=fill).reshape(a.shape)
    if a.size == 0 or b.size == 0:
        return PairMeasurement(np.asarray(expected, dtype=np.float64), 0.0, 0, True)
    return register_windows(a, b, expected, max_shift)
