"""Find the parts of a micrograph the network should not be asked about.

Two kinds of region, both found from cheap statistics (no model):

* **Border bands**: contiguous rows or columns at an edge whose statistics differ from the interior's,
  as motion correction leaves them (MotionCor2/RELION pad the area the shifted frames do not cover):
  flat bands (a constant, or a constant with faint noise), a *smeared* edge line (the last valid line
  repeated outwards, possibly fading) and *striped* padding (a short pattern repeated on every line of the
  band, with faint noise). Each line near an edge is compared with 8 groups of 16 lines sampled from
  the middle of the micrograph (``INTERIOR``). Its statistics are taken on ``N_PARTS`` stretches spread
  over ``SEGMENT`` of the line, which must *all* flag it: a perpendicular band does not leak into the
  line, and a dead patch or a contamination blob at the middle of an edge does not become a band along
  the whole edge. Pixel noise and correlations are measured on the difference of neighbouring samples
  along the line (a large object crossing several lines makes them neither alike nor noisy), per quarter
  of a stretch and then the median of the quarters (a hot pixel does not break a band); values and
  differences are clipped at 4 std. A line is flagged as

  - ``flat``: pixel noise below ``FLAT_STD`` x the interior's median;
  - ``variance``: pixel noise below ``LOW_STD`` or above ``HIGH_STD`` x the interior's;
  - ``mean``: line mean more than ``MEAN_K`` x (interior line std + spread of interior line means)
    outside the interior's 5-95% range of line means (a gradient across the micrograph never trips it);
  - ``repeat``: the line repeats a line k = 1, 2, 4 or 8 lines away: ``1 - corr`` below ``REPEAT_K[k]`` x
    the interior's ``1 - corr`` at that distance (and ``corr > REPEAT_MIN``). Real noise, even low-pass
    filtered, decorrelates with distance; a smeared or striped band does not. On a smooth interior
    (adjacent-line ``1 - corr`` below ``REPEAT_SMOOTH``) the factors for k = 1, 2 shrink in proportion,
    because a low-pass filter's reflecting boundary makes the outermost lines of a clean, smooth
    micrograph alike at small k (they still decorrelate at k = 4, 8).

  A band is the run of flagged lines from the edge (one unflagged line may sit inside the run); a smeared
  band is found one line wider than it is (its first valid line is the one repeated). The scan starts
  with the outer 32 lines and widens while the band reaches the end of the window, up to
  ``MAX_BAND_FRACTION`` of the axis; a clean micrograph costs only those lines per edge.

  Known limit: on a strongly low-pass filtered micrograph (adjacent lines correlated above ~0.9) a
  narrow (< 8 lines) striped band with a faint pattern can be missed.

* **Dead areas**: anywhere in the micrograph, 32x32 cells (every 8th row sampled) whose std is below
  ``DEAD_STD`` x the median cell std (a dead detector region, zero padding, saturation), refined to 8x8
  cells at their border; cells holding non-finite values are dead too.

:func:`find_regions` returns an :class:`InvalidRegions` (per-edge widths plus an 8-px grid of dead cells),
which answers "is this pick within ``d`` px of invalid area" without a distance transform of the full
image; :func:`find_invalid_regions` returns the full-size bool mask;
:meth:`InvalidRegions.network_region` is the rectangle inside the bands that the network is shown (picking,
training and few-shot alike; :func:`network_view` cuts a micrograph and its coordinates to it). Cost on one core: about 30 ms of CPU
for a clean 4096x4096 float32 micrograph, about 75 ms with bands on three edges
(``benchmarks/regions_speed.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# line rules (ratios to the interior's robust statistics)
FLAT_STD = 0.15
LOW_STD = 0.35
HIGH_STD = 5.0
MEAN_K = 6.0
REPEAT_K = {1: 0.02, 2: 0.05, 4: 0.1, 8: 0.1}    # per distance k between the lines compared
REPEAT_SMOOTH = 0.3       # interior 1 - corr(adjacent lines) below which k = 1, 2 are made stricter
REPEAT_MIN = 0.5
REPEAT_LAGS = tuple(REPEAT_K)
# band geometry
MAX_BAND_FRACTION = 0.3     # deepest band looked for, as a fraction of the axis
FIRST_WINDOW = 32           # lines per edge scanned first
GAP = 1                     # unflagged lines allowed inside a band
SEGMENT = (0.1, 0.9)        # part of each line its statistics are taken on,
N_PARTS = 3                 # in this many stretches spread over it, which must all flag
MAX_PART = 400              # samples per stretch at most
SUBPIECES = 4               # a stretch's noise and correlations: the median of its quarters
INTERIOR = (0.3, 0.7)       # where along the axis the reference lines are sampled
# dead cells
DEAD_STD = 0.05
CELL = 32
FINE = 8
ROW_STEP = 8
MIN_SIZE = 64               # micrographs smaller than this on either axis are not analysed

EDGES = ("top", "bottom", "left", "right")


@dataclass
class InvalidRegions:
    """Invalid area of one micrograph: band widths per edge (px) and dead 8x8 cells.

    ``shape`` is the micrograph's (rows, columns) as stored; x is the column, y the row.
    """
    shape: tuple
    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0
    dead: np.ndarray | None = None      # bool (ceil(ny/FINE), ceil(nx/FINE)); None when there is none
    kinds: dict = field(default_factory=dict)   # edge -> rule that flagged most of its band's lines
    _dead_dist: np.ndarray | None = field(default=None, repr=False, compare=False)

    # ----------------------------------------------------------------------------------------- masks
    def band_widths(self) -> dict:
        return {e: int(getattr(self, e)) for e in EDGES}

    def network_region(self, diameter_px: float):
        """(rows, columns) slices of what the network is asked about: the rectangle inside the border bands
        (``defaults.CROP_BANDS``) when it is at least two diameters wide and high, else None (all of it).
        The one rule for picking and training alike."""
        from . import defaults

        return self.interior(min_size=int(np.ceil(2 * diameter_px))) if defaults.CROP_BANDS else None

    def interior(self, min_size: int = 0):
        """(rows, columns) slices of the rectangle inside the border bands, or None when there are no bands
        or it is smaller than ``min_size`` px either way."""
        ny, nx = self.shape
        if not any(self.band_widths().values()):
            return None
        rows, cols = slice(self.top, ny - self.bottom), slice(self.left, nx - self.right)
        if rows.stop - rows.start < max(1, min_size) or cols.stop - cols.start < max(1, min_size):
            return None
        return rows, cols

    def dead_mask(self) -> np.ndarray:
        ny, nx = self.shape
        if self.dead is None or not self.dead.any():
            return np.zeros(self.shape, bool)
        return np.repeat(np.repeat(self.dead, FINE, 0), FINE, 1)[:ny, :nx]

    def mask(self, distance_px: float = 0.0) -> np.ndarray:
        """Full-size bool mask (True = invalid), grown by ``distance_px``."""
        ny, nx = self.shape
        d = max(0, int(np.floor(distance_px)))
        m = np.zeros(self.shape, bool)
        if self.top:
            m[:min(ny, self.top + d)] = True
        if self.bottom:
            m[max(0, ny - self.bottom - d):] = True
        if self.left:
            m[:, :min(nx, self.left + d)] = True
        if self.right:
            m[:, max(0, nx - self.right - d):] = True
        if self.dead is not None and self.dead.any():
            if distance_px > 0:   # the same test as near(), cell by cell of the FINE grid
                cells = self._dead_distance() * FINE - FINE * np.sqrt(0.5) <= distance_px
                m |= np.repeat(np.repeat(cells, FINE, 0), FINE, 1)[:ny, :nx]
            else:
                m |= self.dead_mask()
        return m

    def _fine_sizes(self, exclude_bands: bool):
        """Pixels per FINE row and column of cells (outside the bands when ``exclude_bands``)."""
        out = []
        for n, lo, hi in ((self.shape[0], self.top, self.bottom), (self.shape[1], self.left, self.right)):
            idx = np.arange(n)
            keep = (idx >= lo) & (idx < n - hi) if exclude_bands else np.ones(n, bool)
            out.append(np.add.reduceat(keep.astype(np.int64), np.arange(0, n, FINE)))
        return out

    @property
    def dead_px(self) -> int:
        """Pixels of dead area (bands included where they are dead too)."""
        if self.dead is None or not self.dead.any():
            return 0
        rows, cols = self._fine_sizes(False)
        return int(rows @ self.dead.astype(np.int64) @ cols)

    def excluded_fraction(self, distance_px: float = 0.0) -> float:
        """Fraction of the micrograph's area that is invalid (grown by ``distance_px``)."""
        ny, nx = self.shape
        has_dead = self.dead is not None and self.dead.any()
        if not any(self.band_widths().values()) and not has_dead:
            return 0.0
        if distance_px > 0:
            return float(self.mask(distance_px).mean())
        rows = min(ny, self.top + self.bottom)
        cols = min(nx, self.left + self.right)
        area = rows * nx + cols * (ny - rows)
        if has_dead:  # dead pixels outside the bands: (rows outside them) x (columns outside them)
            r, c = self._fine_sizes(True)
            area += int(r @ self.dead.astype(np.int64) @ c)
        return float(area) / (ny * nx)

    def summary(self) -> dict:
        """Per-micrograph report: band widths, dead pixels and the excluded fraction of the area."""
        return {**self.band_widths(), "dead_px": self.dead_px,
                "excluded_fraction": round(self.excluded_fraction(), 6), "kinds": dict(self.kinds)}

    def describe(self) -> str:
        w = self.band_widths()
        bands = ", ".join(f"{e} {w[e]} px ({self.kinds.get(e, '?')})" for e in EDGES if w[e])
        parts = [f"bands: {bands}" if bands else "no border bands"]
        if self.dead_px:
            parts.append(f"dead area {self.dead_px} px")
        parts.append(f"{100 * self.excluded_fraction():.2f}% of the area excluded")
        return "; ".join(parts)

    # ------------------------------------------------------------------------------------- queries
    def _dead_distance(self) -> np.ndarray:
        """Distance (in FINE cells, centre to centre) from each FINE cell to the nearest dead one."""
        if self._dead_dist is None:
            from scipy import ndimage
            self._dead_dist = ndimage.distance_transform_edt(~self.dead)
        return self._dead_dist

    def near(self, x, y, distance_px: float = 0.0, bands: bool = True) -> np.ndarray:
        """Bool per pick: True where (x, y) lies in invalid area or within ``distance_px`` of it.

        Bands are tested exactly; dead area on its 8-px grid, conservatively (a pick up to ~6 px further
        than ``distance_px`` from a dead cell's pixels may be counted as near).
        """
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))
        ny, nx = self.shape
        d = float(distance_px)
        out = np.zeros(x.shape, bool)
        if bands:
            if self.top:
                out |= y <= self.top - 1 + d
            if self.bottom:
                out |= y >= ny - self.bottom - d
            if self.left:
                out |= x <= self.left - 1 + d
            if self.right:
                out |= x >= nx - self.right - d
        if self.dead is not None and self.dead.any():
            fy = np.clip(np.floor(y / FINE).astype(np.int64), 0, self.dead.shape[0] - 1)
            fx = np.clip(np.floor(x / FINE).astype(np.int64), 0, self.dead.shape[1] - 1)
            # cell-centre distance in px, less the half-diagonal of a cell (conservative)
            dist = self._dead_distance()[fy, fx] * FINE - FINE * np.sqrt(0.5)
            out |= dist <= d
        return out


# ----------------------------------------------------------------------------------- line statistics
def _clip_lines(Z: np.ndarray, times: int) -> np.ndarray:
    """Clip each line of ``Z`` (batches x lines x samples, float64, in place) ``times`` times at 4 std
    of itself: hot pixels and the few samples where a line crosses a sharp edge stop mattering (three
    times make a flat line with a hot pixel flat again)."""
    n = Z.shape[2]
    for _ in range(times):
        m = Z.mean(axis=2, keepdims=True)
        dev = Z - m
        half = 4.0 * np.sqrt(np.einsum("bij,bij->bi", dev, dev) / n)[:, :, None] + 1e-300
        np.clip(Z, m - half, m + half, out=Z)
    return Z


def _line_features(X: np.ndarray, clip_times: int = 3):
    """Per line of ``X`` (batches x lines x samples): robust level (mean), level std, pixel-noise scale
    and the correlation of line i with line i+k of the same batch for each k in REPEAT_LAGS
    (batches x (lines - k)).

    The noise scale and the correlations are taken on the difference of neighbouring samples along the
    line (noise = its std / sqrt 2): a large object that several adjacent lines cross (contamination at
    an edge, a carbon edge, an ice gradient) then makes the lines neither alike nor noisy, while a
    repeated line is repeated in its differences too. Values and differences are clipped (hot pixels)."""
    Xc = _clip_lines(np.array(X, dtype=np.float64), 1)
    med = Xc.mean(axis=2)
    dev = Xc - med[:, :, None]
    rsd = np.sqrt(np.einsum("bij,bij->bi", dev, dev) / Xc.shape[2])
    D = _clip_lines(np.diff(Xc, axis=2), clip_times)
    # noise and correlations per quarter of the stretch, then the median of the quarters: a hot pixel
    # (or a short object) in one quarter leaves a repeated line repeated
    q = D.shape[2] // SUBPIECES
    D = D[:, :, :q * SUBPIECES].reshape(D.shape[0], D.shape[1], SUBPIECES, q)
    D -= D.mean(axis=3, keepdims=True)
    ss = np.einsum("bisj,bisj->bis", D, D)
    noise = np.sqrt(np.median(ss, axis=2) / (2.0 * q))
    norm = np.sqrt(ss)
    corr = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in REPEAT_LAGS:
            if X.shape[1] > k:
                num = np.einsum("bisj,bisj->bis", D[:, :-k], D[:, k:])
                corr[k] = np.median(num / (norm[:, :-k] * norm[:, k:]), axis=2)
            else:
                corr[k] = np.zeros((X.shape[0], 0))
    return med, rsd, noise, corr


@dataclass
class _Reference:
    std: float       # median line std
    noise: float     # median line pixel-noise scale
    lo: float
    hi: float
    decorr: dict     # k -> median (1 - corr) of interior lines k apart


def _segment(n: int):
    """Where a line's statistics are taken: N_PARTS stretches of the line spread evenly over SEGMENT,
    each at most MAX_PART samples long: (starts, length)."""
    lo, hi = int(n * SEGMENT[0]), int(np.ceil(n * SEGMENT[1]))
    h = max(4, min(MAX_PART, (hi - lo) // N_PARTS))
    starts = np.linspace(lo, max(lo, hi - h), N_PARTS).astype(int)
    return tuple(int(v) for v in starts), h


def _parts(block: np.ndarray, seg) -> np.ndarray:
    """(lines x samples of the whole line) -> (N_PARTS x lines x part length), float64."""
    starts, h = seg
    return np.stack([block[:, a:a + h] for a in starts]).astype(np.float64)


def _lines(image, axis: int, start: int, stop: int, reverse: bool) -> np.ndarray:
    """Lines ``start..stop-1`` of ``axis`` (rows for 0, columns for 1) as a (lines x samples) view,
    outermost first when ``reverse``."""
    block = image[start:stop] if axis == 0 else image[:, start:stop].T
    return block[::-1] if reverse else block


def _stack(image, axis: int, edge: str, depth: int, seg) -> np.ndarray:
    """Lines ``0..depth-1`` counted from ``edge`` (index 0 = the outermost line), restricted to the
    segment along the line: (2 halves x depth x half) float64."""
    n = image.shape[axis]
    if edge in ("top", "left"):
        return _parts(_lines(image, axis, 0, depth, False), seg)
    return _parts(_lines(image, axis, n - depth, n, True), seg)


def _interior(image, axis: int, seg) -> _Reference:
    """Reference statistics from 8 groups of 16 consecutive lines spread over the middle of the axis."""
    n = image.shape[axis]
    lo_i, hi_i = int(n * INTERIOR[0]), int(n * INTERIOR[1])
    g = 16
    starts = np.unique(np.linspace(lo_i, max(lo_i, hi_i - g), 8).astype(int))
    groups = [_parts(_lines(image, axis, s, s + g, False), seg) for s in starts]
    med, rsd, noise, corr = _line_features(np.concatenate(groups), clip_times=1)
    meds, stds, noise = med.ravel(), rsd.ravel(), noise.ravel()
    ok = np.isfinite(meds) & np.isfinite(stds) & np.isfinite(noise)
    meds, stds, noise = meds[ok], stds[ok], noise[ok]
    std = float(np.median(stds)) if stds.size else 0.0
    noise = float(np.median(noise)) if noise.size else 0.0
    lo, hi = (np.percentile(meds, [5, 95]) if meds.size else (0.0, 0.0))
    decorr = {}
    for k in REPEAT_LAGS:
        v = 1.0 - corr[k].ravel()
        v = v[np.isfinite(v)]
        decorr[k] = float(np.median(v)) if v.size else 1.0
    return _Reference(std=std, noise=noise, lo=float(lo), hi=float(hi), decorr=decorr)


def _flags(X: np.ndarray, ref: _Reference, n_eval: int):
    """Rule that flags each of the first ``n_eval`` lines of ``X`` (halves x lines x samples) in every
    half ('' where none does)."""
    med, rsd, noise, corr = _line_features(X)
    s = max(ref.std, 1e-30)
    nb, nl = med.shape
    ratio = noise[:, :n_eval] / max(ref.noise, 1e-30)
    margin = MEAN_K * (s + (ref.hi - ref.lo))
    mean_out = (med[:, :n_eval] < ref.lo - margin) | (med[:, :n_eval] > ref.hi + margin)
    repeat = np.zeros((nb, n_eval), bool)
    # a smooth (low-pass filtered) micrograph's outermost lines are alike near a reflecting boundary at
    # small k; tighten k = 1, 2 in proportion to how smooth the interior is
    smooth = min(1.0, max(ref.decorr.get(1, 1.0), 0.0) / REPEAT_SMOOTH)
    for k in REPEAT_LAGS:
        c = corr[k]
        if c.shape[1] == 0:
            continue
        # line i repeats line i-k or line i+k
        cc = np.where(np.isfinite(c), c, -np.inf)
        best = np.full((nb, nl), -np.inf)
        best[:, :-k] = np.maximum(best[:, :-k], cc)
        best[:, k:] = np.maximum(best[:, k:], cc)
        best = best[:, :n_eval]
        factor = REPEAT_K[k] * (smooth if k <= 2 else 1.0)
        repeat |= (best > REPEAT_MIN) & ((1.0 - best) < factor * max(ref.decorr[k], 0.0))
    variance = (ratio < LOW_STD) | (ratio > HIGH_STD)
    flat = ratio < FLAT_STD
    out = np.full(n_eval, "", dtype=object)
    every = lambda f: f.all(axis=0)  # noqa: E731 - every stretch must agree
    anyrule = flat | repeat | mean_out | variance
    ok = every(anyrule)
    for name, f in (("variance", variance), ("mean", mean_out), ("repeat", repeat), ("flat", flat)):
        out[ok & every(f)] = name
    out[ok & (out == "")] = "mixed"
    return out


def _band_run(flag: np.ndarray) -> tuple[int, bool]:
    """Width of the run of flagged lines from the edge (GAP misses allowed inside), and whether the run
    was still open at the end of the window."""
    w, miss = 0, 0
    for i, f in enumerate(flag):
        if f:
            w, miss = i + 1, 0
        else:
            miss += 1
            if miss > GAP:
                return w, False
    return w, w > 0


def _edge_band(image, axis: int, edge: str, ref: _Reference) -> tuple[int, str]:
    n = image.shape[axis]
    line_len = image.shape[1 - axis]
    max_depth = max(1, int(n * MAX_BAND_FRACTION))
    seg = _segment(line_len)
    window = min(FIRST_WINDOW, max_depth)
    extra = max(REPEAT_LAGS)
    while True:
        depth = min(n, window + extra)
        flags = _flags(_stack(image, axis, edge, depth, seg), ref, window)
        w, still_open = _band_run(flags != "")
        if not still_open or window >= max_depth:
            break
        window = min(max_depth, 2 * window)
    if w == 0:
        return 0, ""
    kinds, counts = np.unique([k for k in flags[:w] if k], return_counts=True)
    return int(w), str(kinds[np.argmax(counts)]) if kinds.size else ""


# --------------------------------------------------------------------------------------- dead cells
def _cell_moments(view: np.ndarray, offset: float):
    """Sum and sum of squares of CELL x CELL cells of ``view`` (shape multiples of CELL), every
    ROW_STEP-th row sampled."""
    sub = np.subtract(view[::ROW_STEP], np.float32(offset), dtype=np.float32)
    r = sub.reshape(sub.shape[0], view.shape[1] // CELL, CELL)
    s1 = r.sum(axis=2)
    s2 = np.einsum("abc,abc->ab", r, r)
    k = CELL // ROW_STEP
    s1 = s1.reshape(-1, k, s1.shape[1]).sum(axis=1, dtype=np.float64)
    s2 = s2.reshape(-1, k, s2.shape[1]).sum(axis=1, dtype=np.float64)
    return s1, s2, k * CELL


def _cell_std(image: np.ndarray, offset: float) -> np.ndarray:
    """Std of each CELL x CELL cell, shape (ceil(ny/CELL), ceil(nx/CELL)); the last partial row and
    column of cells are measured on the CELL lines aligned with the image's end. NaN where the cell
    holds non-finite values."""
    ny, nx = image.shape
    my, mx = ny // CELL, nx // CELL
    ey, ex = (ny % CELL > 0), (nx % CELL > 0)
    out = np.empty((my + ey, mx + ex))
    pieces = [((slice(0, my * CELL), slice(0, mx * CELL)), (slice(0, my), slice(0, mx)))]
    if ex:
        pieces.append(((slice(0, my * CELL), slice(nx - CELL, nx)), (slice(0, my), slice(mx, mx + 1))))
    if ey:
        pieces.append(((slice(ny - CELL, ny), slice(0, mx * CELL)), (slice(my, my + 1), slice(0, mx))))
    if ex and ey:
        pieces.append(((slice(ny - CELL, ny), slice(nx - CELL, nx)), (slice(my, my + 1), slice(mx, mx + 1))))
    with np.errstate(invalid="ignore", over="ignore"):
        for src, dst in pieces:
            s1, s2, n = _cell_moments(image[src], offset)
            var = s2 / n - (s1 / n) ** 2
            out[dst] = np.sqrt(np.maximum(var, 0.0))
    return out


def _fine_std(block: np.ndarray) -> np.ndarray:
    """Std of FINE x FINE cells of a block (partial cells at its end included); NaN for non-finite."""
    b = np.asarray(block, dtype=np.float64)
    ri = np.arange(0, b.shape[0], FINE)
    ci = np.arange(0, b.shape[1], FINE)
    with np.errstate(invalid="ignore", over="ignore"):
        b = b - np.nanmedian(b) if np.isfinite(b).any() else b
        n = np.add.reduceat(np.add.reduceat(np.ones_like(b), ci, axis=1), ri, axis=0)
        s1 = np.add.reduceat(np.add.reduceat(b, ci, axis=1), ri, axis=0)
        s2 = np.add.reduceat(np.add.reduceat(b * b, ci, axis=1), ri, axis=0)
        return np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0))


def _dead_cells(image: np.ndarray, offset: float, fallback_std: float) -> np.ndarray | None:
    """Dead area on the FINE grid, or None when there is none."""
    ny, nx = image.shape
    std = _cell_std(image, offset)
    bad = ~np.isfinite(std)
    good = std[~bad]
    ref = float(np.median(good)) if good.size else 0.0
    if ref <= 0:
        ref = fallback_std
    dead = bad | (std < DEAD_STD * ref) if ref > 0 else bad | (std <= 0)
    if not dead.any():
        return None
    fy, fx = -(-ny // FINE), -(-nx // FINE)
    fine = np.zeros((fy, fx), bool)
    # dead cells (the last partial row/column of cells map onto the image's end)
    for i, j in zip(*np.nonzero(dead)):
        r0 = i * CELL if i * CELL + CELL <= ny else ny - CELL
        c0 = j * CELL if j * CELL + CELL <= nx else nx - CELL
        fine[r0 // FINE:-(-(r0 + CELL) // FINE), c0 // FINE:-(-(c0 + CELL) // FINE)] = True
    # refine on the FINE grid (all rows) the cells on either side of the dead area's border: a cell
    # sampled every ROW_STEP rows may look dead while a few of its rows are not
    from scipy import ndimage
    box = np.ones((3, 3), bool)
    ring = (ndimage.binary_dilation(dead, structure=box)
            & ~ndimage.binary_erosion(dead, structure=box, border_value=1))
    ri, ci = np.nonzero(ring)
    my, mx = ny // CELL, nx // CELL
    whole = (ri < my) & (ci < mx)
    k = CELL // FINE
    if whole.any():  # the cells wholly inside the image, all at once
        wi, wj = ri[whole], ci[whole]
        blocks = np.asarray(image[:my * CELL, :mx * CELL].reshape(my, CELL, mx, CELL)[wi, :, wj, :],
                            dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            blocks -= np.nanmedian(blocks, axis=(1, 2), keepdims=True) if not np.isfinite(blocks).all() \
                else np.median(blocks, axis=(1, 2), keepdims=True)
            b = blocks.reshape(-1, k, FINE, k, FINE)
            m1 = b.mean(axis=(2, 4))
            m2 = (b * b).mean(axis=(2, 4))
            fs = np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
        sub_dead = ~np.isfinite(fs) | (fs < DEAD_STD * ref)
        rows = (wi * k)[:, None] + np.arange(k)[None, :]
        cols = (wj * k)[:, None] + np.arange(k)[None, :]
        fine[rows[:, :, None], cols[:, None, :]] = sub_dead
    for i, j in zip(ri[~whole], ci[~whole]):  # partial cells at the image's end
        r0, c0 = i * CELL, j * CELL
        if r0 >= ny or c0 >= nx:
            continue
        fs = _fine_std(image[r0:min(ny, r0 + CELL), c0:min(nx, c0 + CELL)])
        sub_dead = ~np.isfinite(fs) | (fs < DEAD_STD * ref)
        fine[r0 // FINE:r0 // FINE + fs.shape[0], c0 // FINE:c0 // FINE + fs.shape[1]] = sub_dead
    return fine


# ---------------------------------------------------------------------------------------- public API
def find_regions(image: np.ndarray) -> InvalidRegions:
    """Border bands and dead areas of one micrograph (2-D array as stored: rows, columns)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"find_regions wants a 2-D micrograph, got shape {image.shape}")
    ny, nx = image.shape
    regions = InvalidRegions(shape=(ny, nx))
    if ny < MIN_SIZE or nx < MIN_SIZE:
        log.debug("micrograph %s too small to look for invalid regions", image.shape)
        return regions
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    refs = {}
    for axis in (0, 1):
        refs[axis] = _interior(image, axis, _segment(image.shape[1 - axis]))
    if not (np.isfinite(refs[0].std) and np.isfinite(refs[1].std)):
        # non-finite values in the middle: replace them for the statistics (they are dead area below)
        finite = np.isfinite(image)
        image = np.where(finite, image, np.float32(np.median(image[finite]) if finite.any() else 0))
        refs = {axis: _interior(image, axis, _segment(image.shape[1 - axis])) for axis in (0, 1)}
    for edge, axis in (("top", 0), ("bottom", 0), ("left", 1), ("right", 1)):
        if refs[axis].noise <= 0 or refs[axis].std <= 0:
            continue      # constant interior: nothing to compare with (all of it is dead below)
        w, kind = _edge_band(image, axis, edge, refs[axis])
        setattr(regions, edge, w)
        if w:
            regions.kinds[edge] = kind
    offset = 0.5 * (refs[0].lo + refs[0].hi)
    regions.dead = _dead_cells(image, offset if np.isfinite(offset) else 0.0,
                               fallback_std=max(refs[0].std, refs[1].std))
    if log.isEnabledFor(logging.DEBUG) and (any(regions.band_widths().values()) or regions.dead is not None):
        log.debug("invalid regions %s: %s", image.shape, regions.describe())
    return regions


def to_region(xy: np.ndarray, inside) -> np.ndarray:
    """(N, 2) x, y in a micrograph's pixels -> those whose nearest pixel lies in the region ``inside`` ((rows,
    columns) slices, :meth:`InvalidRegions.network_region`), in the region's pixels."""
    rows, cols = inside
    xy = np.asarray(xy, np.float64).reshape(-1, 2) - np.array([cols.start, rows.start], np.float64)[None, :]
    keep = ((xy[:, 0] >= -0.5) & (xy[:, 0] < cols.stop - cols.start - 0.5) & (xy[:, 1] >= -0.5)
            & (xy[:, 1] < rows.stop - rows.start - 0.5))
    return xy[keep]


def network_view(image: np.ndarray, xy: np.ndarray, diameter_px: float) -> tuple:
    """A micrograph (2-D array) with coordinates as the network is shown it, for training and few-shot:
    -> (the rectangle inside its border bands, the coordinates in it (:func:`to_region`), its (rows, columns)
    slices), or (image, xy, None) when it is read whole (:meth:`InvalidRegions.network_region`)."""
    inside = find_regions(image).network_region(diameter_px)
    if inside is None:
        return image, xy, None
    return np.ascontiguousarray(image[inside]), to_region(xy, inside), inside


def find_invalid_regions(image: np.ndarray) -> np.ndarray:
    """Bool mask of the micrograph's shape: True where the network should not be asked (border bands,
    dead areas)."""
    return find_regions(image).mask()


def dilate_invalid(mask, distance_px: float) -> np.ndarray:
    """Grow an invalid mask (bool array or :class:`InvalidRegions`) by ``distance_px`` (Euclidean).

    For an :class:`InvalidRegions` this is cheap (bands grow by their width); a plain mask takes a
    distance transform of the whole image (about a second at 4096x4096)."""
    if isinstance(mask, InvalidRegions):
        return mask.mask(distance_px)
    mask = np.asarray(mask, dtype=bool)
    if distance_px <= 0 or not mask.any() or mask.all():
        return mask.copy()
    from scipy import ndimage
    return ndimage.distance_transform_edt(~mask) <= distance_px


def near_invalid(regions, x, y, distance_px: float = 0.0) -> np.ndarray:
    """Bool per pick (x = column, y = row): True where the pick is in invalid area or within
    ``distance_px`` of it. ``regions`` is an :class:`InvalidRegions` (cheap) or a bool mask."""
    if isinstance(regions, InvalidRegions):
        return regions.near(x, y, distance_px)
    mask = np.asarray(regions, dtype=bool)
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if not mask.any():
        return np.zeros(x.shape, bool)
    ix = np.clip(np.rint(x).astype(np.int64), 0, mask.shape[1] - 1)
    iy = np.clip(np.rint(y).astype(np.int64), 0, mask.shape[0] - 1)
    if distance_px <= 0:
        return mask[iy, ix]
    from scipy import ndimage
    return ndimage.distance_transform_edt(~mask)[iy, ix] <= distance_px


def excluded_fraction(regions, distance_px: float = 0.0) -> float:
    """Fraction of the micrograph's area that is invalid (optionally grown by ``distance_px``)."""
    if isinstance(regions, InvalidRegions):
        return regions.excluded_fraction(distance_px)
    mask = dilate_invalid(regions, distance_px)
    return float(mask.mean()) if mask.size else 0.0


def save_mask_png(path, image: np.ndarray, mask, max_px: int = 1024, title: str | None = None) -> None:
    """QC image: the micrograph in grey with its invalid area (bool mask or :class:`InvalidRegions`) in
    translucent red, written atomically (:func:`hydrapicker.qc.qc_png`, without picks). Large micrographs
    are shown subsampled to ``max_px``."""
    from .qc import qc_png

    qc_png(path, image, mask.mask() if isinstance(mask, InvalidRegions) else mask, title=title, max_px=max_px)
