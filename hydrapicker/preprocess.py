"""Read a micrograph, rescale it so the particle has the model's extent, normalise it.

Rescaling is Fourier cropping (downsampling) or zero-padding (upsampling) of the real FFT, which keeps
sample 0 in place: a pixel x of the rescaled image lies at x / scale of the original, with
``scale = new_n / n`` per axis. Normalisation removes slow background (ice gradients, carbon) with a broad
Gaussian high-pass, then scales by robust statistics (median / MAD) and clips outliers.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MicrographError


@dataclass
class Prepared:
    image: np.ndarray          # float32 (ny', nx') normalised, rescaled
    scale_xy: tuple            # (nx'/nx, ny'/ny)
    shape: tuple               # original (ny, nx)
    pixel_size: float          # A/px of the original


def read_mrc(path, expected_apix=None):
    """Memory-map a 2D micrograph -> (array view, header pixel size or None). Clear errors otherwise."""
    import mrcfile

    path = Path(path)
    if not path.exists():
        raise MicrographError(f"micrograph {path} does not exist: check the path (relative paths are read "
                              f"from the current directory, the RELION project directory)")
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
    """Choose the pixel size: explicit > STAR > MRC header; error when none, zero or negative.

    A STAR and header that disagree by more than ``tolerance`` (relative) is reported as a warning
    naming both (RELION trusts the STAR, and so do we), unless the header holds the common unset
    value 1.0.
    """
    for value, source in ((explicit_apix, "--apix"), (star_apix, "the micrographs STAR")):
        if value is not None:
            if not np.isfinite(value) or value <= 0:
                raise MicrographError(f"pixel size {value} from {source} for {path} is not positive: "
                                      f"fix _rlnMicrographPixelSize in the optics table or pass --apix")
            if (header_apix and abs(header_apix - 1.0) > 1e-6
                    and abs(header_apix - value) > tolerance * value and source != "--apix"):
                warnings.warn(f"{path}: pixel size {value} A in the STAR but {header_apix} A in the MRC "
                              f"header; using the STAR value", stacklevel=2)
            return float(value)
    if header_apix:
        return float(header_apix)
    raise MicrographError(f"no pixel size for {path}: the MRC header has none and no STAR gave one; "
                          f"pass --apix or use a micrographs STAR with _rlnMicrographPixelSize")


def check_finite(img: np.ndarray, path) -> None:
    if not np.isfinite(img).all():
        bad = int((~np.isfinite(img)).sum())
        raise MicrographError(f"{path} contains {bad} NaN/Inf pixels; the file is corrupt: re-run "
                              f"motion correction for it or exclude it")
    if float(img.max()) == float(img.min()):
        raise MicrographError(f"{path} is a constant image (every pixel = {float(img.min())}); "
                              f"exclude it")


def fourier_rescale(img: np.ndarray, new_shape) -> np.ndarray:
    """Rescale by cropping (or zero-padding) the spectrum; keeps sample 0 in place and the mean."""
    ny, nx = img.shape
    my, mx = new_shape
    if (my, mx) == (ny, nx):
        return img.astype(np.float32, copy=True)
    F = np.fft.rfft2(img.astype(np.float32))
    out = np.zeros((my, mx // 2 + 1), dtype=F.dtype)
    ky = min(ny, my) // 2          # rows kept from the positive and negative ends
    kx = min(nx // 2 + 1, mx // 2 + 1)
    out[:ky, :kx] = F[:ky, :kx]
    out[my - ky:, :kx] = F[ny - ky:, :kx]
    res = np.fft.irfft2(out, s=(my, mx))
    res *= (my * mx) / float(ny * nx)
    return res.astype(np.float32)


def rescaled_shape(shape, pixel_size: float, diameter_A: float, extent_px: float):
    scale = extent_px * pixel_size / diameter_A
    return tuple(max(8, int(round(n * scale))) for n in shape), scale


def highpass_normalise(img: np.ndarray, sigma_px: float, clip: float = 5.0) -> np.ndarray:
    """Remove slow background (Gaussian of ``sigma_px``), then robust z-score and clipping."""
    from scipy.ndimage import gaussian_filter

    img = img.astype(np.float32)
    if sigma_px > 0:
        img = img - gaussian_filter(img, sigma_px, mode="reflect")
    med = np.median(img)
    mad = np.median(np.abs(img - med)) * 1.4826
    if not mad > 0:
        mad = float(img.std()) or 1.0
    out = (img - med) / mad
    np.clip(out, -clip, clip, out=out)
    return out.astype(np.float32)


def prepare(image: np.ndarray, pixel_size: float, diameter_A: float, extent_px: float, path="<array>"):
    """Original micrograph -> :class:`Prepared` (rescaled so the particle is ``extent_px`` wide)."""
    check_finite(image, path)
    ny, nx = image.shape
    size_px = diameter_A / pixel_size
    if not (diameter_A > 0) or size_px < 3 or size_px > 0.9 * min(ny, nx):
        raise MicrographError(f"particle diameter {diameter_A} A is {size_px:.1f} px at {pixel_size} A/px in "
                              f"{path} ({nx}x{ny} px): give the diameter in Angstrom (between ~3 px and the "
                              f"micrograph size)")
    new_shape, _ = rescaled_shape((ny, nx), pixel_size, diameter_A, extent_px)
    small = fourier_rescale(np.asarray(image, dtype=np.float32), new_shape)
    small = highpass_normalise(small, sigma_px=4.0 * extent_px)
    scale_xy = (new_shape[1] / nx, new_shape[0] / ny)
    return Prepared(small, scale_xy, (ny, nx), pixel_size)


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
