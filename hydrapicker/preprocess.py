"""Read a micrograph, rescale it so the particle has the model's extent, normalise it.

Rescaling is Fourier cropping (downsampling) or zero-padding (upsampling) of the real FFT, which keeps
sample 0 in place: a pixel x of the rescaled image lies at x / scale of the original, with
``scale = new_n / n`` per axis. Normalisation removes slow background (ice gradients, carbon) with a broad
Gaussian high-pass, then scales by robust statistics (median / MAD) and clips outliers. Isolated hot and
dead pixels are replaced by their neighbours' median before rescaling (:func:`remove_hot_pixels_t`).

One implementation, in torch, runs on whatever device holds the image: the Picker prepares on the GPU when
it has one (a 4096² FFT there takes about a millisecond, on the CPU it dominates the cost of a pick), and the
numpy front ends below (training data, few-shot labels, tests) run the same code on the CPU. The Gaussian
equals ``scipy.ndimage.gaussian_filter(mode="reflect", truncate=4)``, the median ``numpy.median``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import MicrographError, PixelSizeError


@dataclass
class Prepared:
    image: "np.ndarray"        # float32 (ny', nx') normalised, rescaled (a torch tensor from prepare_t)
    scale_xy: tuple            # (nx'/nx, ny'/ny)
    shape: tuple               # original (ny, nx)
    pixel_size: float          # A/px of the original
    origin: tuple = (0, 0)     # (x0, y0): the micrograph pixel at the prepared image's first sample (border
                               # bands cropped off: hydrapicker.picker); x = x_prepared / scale_x + x0
    region: Optional[tuple] = None  # (ny, nx) of the part prepared when it is not the whole micrograph


def read_mrc(path, looked_in=None):
    """Memory-map a 2D micrograph -> (array view, header pixel size or None). Clear errors otherwise.

    ``looked_in``: the folders a relative name was looked for from (for the message when it is missing)."""
    import mrcfile

    path = Path(path)
    if not path.exists():
        if looked_in and not path.is_absolute():
            where = " and from ".join(str(d) for d in looked_in)
            raise MicrographError(f"micrograph {path} does not exist: looked for it from {where} (the current "
                                  f"directory, then the STAR file's folder); check the name in the STAR or run "
                                  f"from the folder its names are relative to")
        raise MicrographError(f"micrograph {path} does not exist: check the path (relative paths are read "
                              f"from the current directory, {os.getcwd()})")
    if path.is_dir():
        raise MicrographError(f"{path} is a directory, not a micrograph: give the MRC files in it, e.g. "
                              f"'{path}/*.mrc' (quoted)")
    try:
        mrc = mrcfile.mmap(path, mode="r", permissive=False)
    except Exception as exc:
        raise MicrographError(f"cannot read {path} as an MRC file ({exc}); is the file complete? "
                              f"re-run motion correction or re-copy it") from exc
    data = mrc.data
    if data is None:
        raise MicrographError(f"{path} holds no image data; re-copy or regenerate the file")
    if data.ndim == 3:
        if data.shape[0] != 1:
            kind = "stack" if mrc.is_image_stack() else "3D volume"
            raise MicrographError(f"{path} is a {kind} of shape {tuple(data.shape)}, not a 2D micrograph: "
                                  f"give motion-corrected (summed) micrographs")
        data = data[0]
    if data.ndim != 2:
        raise MicrographError(f"{path} has {data.ndim} dimensions; a 2D micrograph is expected")
    if min(data.shape) < 32:
        raise MicrographError(f"{path} is only {data.shape[1]}x{data.shape[0]} pixels; is it a micrograph?")
    vs = float(mrc.voxel_size.x)
    header_apix = vs if vs > 0 else None
    return data, header_apix


def resolve_pixel_size(path, star_apix, header_apix, explicit_apix=None, tolerance=0.02) -> float:
    """The pixel size of :func:`pixel_size_and_source` (explicit > STAR > MRC header)."""
    if explicit_apix is not None:
        return pixel_size_and_source(path, explicit_apix, header_apix, "--apix", tolerance)[0]
    return pixel_size_and_source(path, star_apix, header_apix, None, tolerance)[0]


def pixel_size_and_source(path, given, header_apix, given_source=None, tolerance=0.02) -> tuple:
    """-> (pixel size in A/px, where it came from). ``given``: the value of the STAR or ``--apix``
    (``given_source`` says which; None: "the micrographs STAR"), else the MRC header is used.

    Raises :class:`PixelSizeError` (the run stops: every micrograph would be picked at a wrong scale)
    for a given value that is not positive, and, when nothing else gives one, for a header without a
    pixel size or with exactly 1.0 (what many writers put when they do not know it). A STAR and header
    that disagree by more than ``tolerance`` (relative) is reported as a warning naming both (RELION
    trusts the STAR, and so do we), unless the header holds the common unset value 1.0.
    """
    if given is not None:
        source = given_source or "the micrographs STAR"
        if not np.isfinite(given) or given <= 0:
            if source == "--apix":
                raise PixelSizeError(f"--apix {given:g} is not a pixel size: give the micrographs' pixel size in "
                                     f"A/px, e.g. --apix 1.06")
            raise PixelSizeError(f"pixel size {given:g} from {source} for {path} is not positive: fix "
                                 f"_rlnMicrographPixelSize in its optics table, or pass --apix to hydra pick")
        if (header_apix and abs(header_apix - 1.0) > 1e-6
                and abs(header_apix - given) > tolerance * given and source != "--apix"):
            warnings.warn(f"{path}: pixel size {given} A in the STAR but {header_apix} A in the MRC "
                          f"header; using the STAR value", stacklevel=2)
        return float(given), source
    if not header_apix:
        raise PixelSizeError(f"no pixel size for {path}: its MRC header has none (0) and no STAR or --apix gives "
                             f"one; pass --apix <A/px> or use a micrographs STAR with _rlnMicrographPixelSize")
    if abs(header_apix - 1.0) <= 1e-6:
        raise PixelSizeError(f"{path}: the MRC header's pixel size is exactly 1.0 A/px, what many programs write "
                             f"when they do not know it, and no STAR or --apix gives one: pass --apix <A/px> "
                             f"(--apix 1.0 if it really is 1.0) or use a micrographs STAR with "
                             f"_rlnMicrographPixelSize")
    return float(header_apix), "MRC header"


def _torch():
    import torch

    return torch


def _cpu_tensor(img):
    """A float32 numpy array (a read-only memory map is copied: torch needs writable memory) as a tensor."""
    arr = np.asarray(img, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    return _torch().from_numpy(arr)


def check_finite(t, path) -> tuple:
    """Clear errors for NaN/Inf pixels and constant images (a tensor; one pass when all is well)
    -> the image's (min, max)."""
    torch = _torch()
    lo, hi = torch.aminmax(t)  # NaN propagates, Inf is an extreme: both show here
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        bad = int((~torch.isfinite(t)).sum())
        raise MicrographError(f"{path} contains {bad} NaN/Inf pixels; the file is corrupt: re-run "
                              f"motion correction for it or exclude it")
    if float(hi) == float(lo):
        raise MicrographError(f"{path} is a constant image (every pixel = {float(lo)}); "
                              f"exclude it")
    return float(lo), float(hi)


def fourier_rescale_t(img, new_shape):
    """Rescale a 2D float32 tensor by cropping (or zero-padding) its real FFT; keeps sample 0 in place
    and the mean. Runs on the tensor's device."""
    torch = _torch()
    ny, nx = img.shape
    my, mx = new_shape
    if (my, mx) == (ny, nx):
        return img.to(torch.float32, copy=True)
    F = torch.fft.rfft2(img.to(torch.float32))
    out = torch.zeros((my, mx // 2 + 1), dtype=F.dtype, device=F.device)
    ky = min(ny, my) // 2          # rows kept from the positive and negative ends
    kx = min(nx // 2 + 1, mx // 2 + 1)
    out[:ky, :kx] = F[:ky, :kx]
    out[my - ky:, :kx] = F[ny - ky:, :kx]
    res = torch.fft.irfft2(out, s=(my, mx))
    return res * ((my * mx) / float(ny * nx))


def _reflect_index(n: int, r: int, device):
    """Indices of a length-``n`` axis extended by ``r`` on both sides, mirrored as scipy's "reflect"
    (d c b a | a b c d | d c b a), for any ``r`` (also ``r`` > ``n``)."""
    torch = _torch()
    i = torch.arange(-r, n + r, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur_t(img, sigma: float, truncate: float = 4.0):
    """``scipy.ndimage.gaussian_filter(img, sigma, mode="reflect", truncate=4)`` for a 2D float32 tensor,
    as two 1D convolutions done by FFT (the kernel is hundreds of pixels wide)."""
    torch = _torch()
    r = int(truncate * float(sigma) + 0.5)
    if r == 0:
        return img.clone()
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    kernel = torch.from_numpy((k / k.sum()).astype(np.float32)).to(img.device)
    out = img
    for axis in (0, 1):
        a = out if axis == 1 else out.T
        n = a.shape[1]
        ext = a[:, _reflect_index(n, r, a.device)]          # (rows, n + 2r)
        L = n + 4 * r                                     # full linear convolution length
        full = torch.fft.irfft(torch.fft.rfft(ext, n=L) * torch.fft.rfft(kernel, n=L), n=L)
        a = full[:, 2 * r: 2 * r + n]
        out = a if axis == 1 else a.T
    return out.contiguous()


def _median(t):
    """``numpy.median`` of all elements (the mean of the two middle values when their number is even)."""
    flat = t.reshape(-1)
    n = flat.numel()
    lo = flat.kthvalue((n + 1) // 2).values
    if n % 2:
        return lo
    return 0.5 * (lo + flat.kthvalue(n // 2 + 1).values)


def highpass_normalise_t(img, sigma_px: float, clip: float = 5.0):
    """Remove slow background (Gaussian of ``sigma_px``), then robust z-score and clipping (tensor)."""
    torch = _torch()
    img = img.to(torch.float32)
    if sigma_px > 0:
        img = img - gaussian_blur_t(img, sigma_px)
    med = _median(img)
    mad = _median((img - med).abs()) * 1.4826
    if not float(mad) > 0:
        mad = img.std(unbiased=False)
        if not float(mad) > 0:
            mad = torch.ones((), device=img.device)
    return ((img - med) / mad).clamp_(-clip, clip)


#: a pixel further than this many robust standard deviations (1.4826 MAD) from both the micrograph's
#: median and the median of its 8 neighbours is a hot or dead pixel (:func:`remove_hot_pixels_t`)
HOT_PIXEL_SIGMAS = 10.0


def remove_hot_pixels_t(img, sigmas: float = HOT_PIXEL_SIGMAS, n_sample: int = 50_000, inplace: bool = False,
                        extremes: Optional[tuple] = None):
    """A 2D tensor with its hot and dead pixels (further than ``sigmas`` robust standard deviations from the
    micrograph's median *and* from the median of their 8 neighbours) replaced by that neighbour median
    -> (tensor, number replaced). Fourier rescaling spreads a single extreme pixel into a ringing spot of
    about a particle's size, which the network may take for a particle. Outlier *areas* (border bands,
    padding, gold, dark contamination and the noise inside it) are left alone: their pixels are close to
    their neighbours. The statistics come from about ``n_sample`` evenly strided pixels; an image without
    extremes (the usual case) costs one min/max pass (none when ``extremes``, the image's (min, max), are
    given) and is returned as it is; ``inplace`` writes into ``img`` (a tensor the caller owns) instead of a
    copy."""
    torch = _torch()
    sample = img.reshape(-1)[::max(1, img.numel() // n_sample)].to(torch.float32)
    med = float(sample.median())
    sd = 1.4826 * float((sample - med).abs().median())
    if not sd > 0:  # integer counts or mostly constant: the MAD says nothing
        sd = float(sample.std())
    if not sd > 0:
        return img, 0
    lim = sigmas * sd
    lo, hi = extremes if extremes is not None else (float(v) for v in torch.aminmax(img))
    # dark side only where the micrograph has no dark areas (contamination, thick ice, gold: more than 0.1 %
    # of the sample beyond half the limit): there its extreme pixels are noise in those areas, and the pass
    # over every pixel would find no dead one worth the time
    dark = med - lo > lim and float((sample < med - 0.5 * lim).float().mean()) < 1e-3
    found = ([torch.nonzero(img > med + lim)] if hi - med > lim else []) + \
            ([torch.nonzero(img < med - lim)] if dark else [])
    if not found:
        return img, 0
    iy, ix = torch.cat(found).unbind(1)
    ny, nx = img.shape
    nb_med = torch.stack([img[(iy + dy).clamp(0, ny - 1), (ix + dx).clamp(0, nx - 1)]
                          for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]).median(dim=0).values
    hot = (img[iy, ix] - nb_med).abs() > lim
    n = int(hot.sum())
    if not n:
        return img, 0
    out = img if inplace else img.clone()
    out[iy[hot], ix[hot]] = nb_med[hot].to(out.dtype)
    return out, n


#: a row or column whose mean departs from its neighbours' by more than this many robust standard deviations
#: of such departures, along its whole length, is a gain-reference stripe (:func:`remove_stripes_t`)
STRIPE_SIGMAS = 8.0
#: the neighbourhood (rows or columns, centred) whose median a row's or column's mean is compared with
STRIPE_WINDOW = 17
#: each line is cut into this many pieces: its offset is the median of theirs (a stripe runs the whole line)
STRIPE_PIECES = 8


def _running_median(v, window: int):
    """Median of each element's centred ``window`` along the last axis (mirrored at the ends)."""
    r = window // 2
    ext = v[..., _reflect_index(v.shape[-1], r, v.device)]
    return ext.unfold(-1, 2 * r + 1, 1).median(dim=-1).values


def _piece_means(img, along: int, pieces: int):
    """(pieces, lines): the mean of each of ``pieces`` consecutive pieces of every line (rows: ``along`` = 1,
    columns: 0)."""
    ny, nx = img.shape
    if along == 1:   # rows: pieces of columns
        k = nx // pieces
        means = img[:, :k * pieces].reshape(ny, pieces, k).mean(dim=2).T    # (pieces, rows)
    else:            # columns: pieces of rows (contiguous blocks: no copy)
        k = ny // pieces
        means = img[:k * pieces].reshape(pieces, k, nx).mean(dim=1)         # (pieces, columns)
    return means


def _offsets(means, window: int):
    """Per line, the median over its pieces of the piece's mean minus the median of the same piece of its
    ``window`` neighbouring lines."""
    return (means - _running_median(means, window)).median(dim=0).values


def remove_stripes_t(img, sigmas: float = STRIPE_SIGMAS, window: int = STRIPE_WINDOW,
                     pieces: int = STRIPE_PIECES, inplace: bool = False):
    """A 2D tensor with its gain-reference stripes removed -> (tensor, rows corrected, columns corrected).

    A stripe is a whole row or column (a few wide) offset from its neighbours: a wrong gain reference, or a
    weak or hot detector line. Fourier rescaling keeps it as a line, and the network picks along it. Each
    line is cut into ``pieces`` pieces; each piece's mean is compared with the median of the same piece of
    its ``window`` neighbouring lines (which follows steps and gradients: carbon edges, thick ice), and the
    line's offset is the median over its pieces, so what covers part of a line only (a particle,
    contamination, gold, a border band) does not make it a stripe. An offset beyond ``sigmas`` robust
    standard deviations of all lines' offsets is subtracted from its line. The threshold comes from the
    micrograph itself: on one without stripes no line is touched and the image is returned as it is.
    ``inplace`` writes into ``img`` (a tensor the caller owns). Costs one pass over the image per axis."""
    torch = _torch()
    ny, nx = img.shape
    if min(ny, nx) < 4 * window or min(ny, nx) < 8 * pieces:
        return img, 0, 0
    x = img.to(torch.float32)
    fixes = []
    for along in (1, 0):                      # rows, then columns
        means = _piece_means(x, along, pieces)
        off = _offsets(means, window)
        centred = off - off.median()
        spread = 1.4826 * float(centred.abs().median())
        bad = centred.abs() > sigmas * spread if spread > 0 else torch.zeros_like(off, dtype=torch.bool)
        off = torch.where(bad, off, torch.zeros_like(off))
        if bad.any():  # a stripe several lines wide lifts its own neighbours' median: once more without it
            off = off + torch.where(bad, _offsets(means - off, window), torch.zeros_like(off))
        fixes.append((along, off, int(bad.sum())))
    if not any(n for _, _, n in fixes):
        return img, 0, 0
    out = img if inplace else img.clone()
    for along, off, n in fixes:
        if n:
            out -= (off[:, None] if along == 1 else off[None, :]).to(out.dtype)
    return out, fixes[0][2], fixes[1][2]


def fourier_rescale(img: np.ndarray, new_shape) -> np.ndarray:
    """numpy front end of :func:`fourier_rescale_t` (CPU)."""
    return fourier_rescale_t(_cpu_tensor(img), new_shape).numpy()


def rescaled_shape(shape, pixel_size: float, diameter_A: float, extent_px: float):
    scale = extent_px * pixel_size / diameter_A
    return tuple(max(8, int(round(n * scale))) for n in shape), scale


def prepare_t(image, pixel_size: float, diameter_A: float, extent_px: float, path="<array>",
              owned: bool = False) -> "Prepared":
    """A micrograph as a 2D tensor (any device) -> :class:`Prepared` whose image is a tensor on that device.
    ``owned``: the caller does not use ``image`` afterwards (its hot pixels are then replaced in place)."""
    extremes = check_finite(image, path)
    ny, nx = image.shape
    size_px = diameter_A / pixel_size
    if not (diameter_A > 0) or size_px < 3 or size_px > 0.9 * min(ny, nx):
        raise MicrographError(f"particle diameter {diameter_A} A is {size_px:.1f} px at {pixel_size} A/px in "
                              f"{path} ({nx}x{ny} px): give the diameter in Angstrom (between ~3 px and the "
                              f"micrograph size)")
    new_shape, _ = rescaled_shape((ny, nx), pixel_size, diameter_A, extent_px)
    image, n_hot = remove_hot_pixels_t(image, inplace=owned, extremes=extremes)
    image, _, _ = remove_stripes_t(image, inplace=owned or n_hot > 0)
    small = fourier_rescale_t(image, new_shape)
    small = highpass_normalise_t(small, sigma_px=4.0 * extent_px)
    scale_xy = (new_shape[1] / nx, new_shape[0] / ny)
    return Prepared(small, scale_xy, (ny, nx), pixel_size)


def prepare(image: np.ndarray, pixel_size: float, diameter_A: float, extent_px: float, path="<array>"):
    """Original micrograph (numpy) -> :class:`Prepared` with a numpy image (rescaled so the particle is
    ``extent_px`` wide); the same computation as :func:`prepare_t`, on the CPU."""
    p = prepare_t(_cpu_tensor(image), pixel_size, diameter_A, extent_px, path)
    return Prepared(p.image.numpy(), p.scale_xy, p.shape, p.pixel_size)


def tiles(shape, tile: int, margin: int, stride: int):
    """Yield (y0, y1, x0, x1, core_y0, core_y1, core_x0, core_x1) windows covering ``shape``.

    Windows overlap by ``margin`` on each side; the *core* of each window (multiple of ``stride``) is the
    part whose outputs are kept, so cores tile the image exactly once.
    """
    ny, nx = shape
    core = max(stride, (tile - 2 * margin) // stride * stride)
    for cy in range(0, ny, core):
        for cx in range(0, nx, core):
            cy1, cx1 = min(cy + core, ny), min(cx + core, nx)
            y0, x0 = max(0, cy - margin), max(0, cx - margin)
            y1, x1 = min(ny, cy1 + margin), min(nx, cx1 + margin)
            yield y0, y1, x0, x1, cy, cy1, cx, cx1
