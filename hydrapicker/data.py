"""Training data: prepared (rescaled, normalised) micrographs with truth, crops, augmentation, targets.

A :class:`PreparedSet` is one dataset (one particle type + imaging) already rescaled to the model's
particle extent with the same :func:`hydrapicker.preprocess.prepare` used at picking time, so training and
inference see identical inputs. Mini-batches are drawn from one dataset at a time (thesis).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import defaults
from .criterion import encode
from .preprocess import prepare


@dataclass
class PreparedMic:
    image: np.ndarray            # float32 rescaled, normalised
    xy: np.ndarray               # (N, 2) truth in rescaled px
    weight: Optional[np.ndarray] = None   # optional per-pixel label weight (1 = annotated, 0 = ignore)
    name: str = ""


@dataclass
class PreparedSet:
    name: str
    mics: list
    info: dict = field(default_factory=dict)


def prepare_with_truth(image, xy, pixel_size, diameter_A, extent_px, scale_jitter=0.0, rng=None,
                       name="") -> PreparedMic:
    """Rescale a micrograph and its truth (pixels of the original) to the model's extent.

    ``scale_jitter`` = j > 0 trains robustness to users' diameter estimates: the diameter used for
    rescaling is the true one times a log-uniform factor in [1/(1+j), 1+j] (j = 0.4: 0.71x to 1.4x).
    """
    d = diameter_A
    if scale_jitter and rng is not None:
        d = diameter_A * float(np.exp(rng.uniform(-np.log1p(scale_jitter), np.log1p(scale_jitter))))
    p = prepare(np.asarray(image, np.float32), pixel_size, d, extent_px, path=name)
    xy = np.asarray(xy, np.float64).reshape(-1, 2) * np.asarray(p.scale_xy)[None, :]
    return PreparedMic(p.image, xy, None, name)


def _rot_flip(img, xy, weight, k, flip):
    """Rotate by k*90 degrees and optionally flip left-right; coordinates follow (x=col, y=row)."""
    h, w = img.shape
    xy = xy.copy()
    for _ in range(k % 4):
        # np.rot90 (counter-clockwise): new[r, c] = old[c, W-1-r] -> x' = y, y' = (W-1) - x
        img = np.rot90(img)
        if weight is not None:
            weight = np.rot90(weight)
        xy = np.stack([xy[:, 1], (w - 1) - xy[:, 0]], axis=1) if len(xy) else xy
        h, w = w, h
    if flip:
        img = img[:, ::-1]
        if weight is not None:
            weight = weight[:, ::-1]
        if len(xy):
            xy[:, 0] = (w - 1) - xy[:, 0]
    return np.ascontiguousarray(img), xy, (None if weight is None else np.ascontiguousarray(weight))


def augment_intensity(img, rng):
    """Blur, additive noise and contrast changes, then re-standardise (crYOLO-style augmentation)."""
    from scipy.ndimage import gaussian_filter

    out = img
    if rng.random() < 0.3:
        out = gaussian_filter(out, float(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.5:
        out = out + rng.normal(0, float(rng.uniform(0.1, 0.8)), out.shape).astype(np.float32)
    if rng.random() < 0.3:
        out = out * float(rng.uniform(0.6, 1.4)) + float(rng.normal(0, 0.2))
    s = float(out.std()) or 1.0
    return ((out - float(out.mean())) / s).astype(np.float32)


def sample_crop(mic: PreparedMic, crop: int, stride: int, rng, augment=True, reach=defaults.ASSIGN_REACH):
    """A random crop (crop x crop) with its encoded targets (cls, off, weight on the grid)."""
    img, xy, wt = mic.image, mic.xy, mic.weight
    h, w = img.shape
    if h < crop or w < crop:
        ph, pw = max(0, crop - h), max(0, crop - w)
        img = np.pad(img, ((0, ph), (0, pw)))
        if wt is not None:
            wt = np.pad(wt, ((0, ph), (0, pw)))
        h, w = img.shape
    y0 = int(rng.integers(0, h - crop + 1))
    x0 = int(rng.integers(0, w - crop + 1))
    c_img = img[y0:y0 + crop, x0:x0 + crop]
    c_wt = None if wt is None else wt[y0:y0 + crop, x0:x0 + crop]
    c_xy = xy - np.array([x0, y0])[None, :] if len(xy) else xy.reshape(0, 2)
    if len(c_xy):
        inside = (c_xy[:, 0] >= -0.5) & (c_xy[:, 0] < crop - 0.5) & (c_xy[:, 1] >= -0.5) & (c_xy[:, 1] < crop - 0.5)
        c_xy = c_xy[inside]
    if augment:
        c_img, c_xy, c_wt = _rot_flip(c_img, c_xy, c_wt, int(rng.integers(0, 4)), bool(rng.integers(0, 2)))
        c_img = augment_intensity(c_img, rng)
    g = crop // stride
    cls, off, _ = encode(c_xy, (g, g), stride, reach)
    if c_wt is None:
        weight = np.ones((g, g), np.float32)
    else:
        weight = c_wt.reshape(g, stride, g, stride).mean(axis=(1, 3)).astype(np.float32)
        weight = np.maximum(weight, cls)  # labelled particles are always taught
    return np.ascontiguousarray(c_img, dtype=np.float32), cls, off, weight


def make_batch(dataset: PreparedSet, batch: int, crop: int, stride: int, rng, augment=True,
               reach=defaults.ASSIGN_REACH):
    import torch

    imgs, clss, offs, wts = [], [], [], []
    for _ in range(batch):
        mic = dataset.mics[int(rng.integers(0, len(dataset.mics)))]
        a, c, o, w = sample_crop(mic, crop, stride, rng, augment, reach)
        imgs.append(a)
        clss.append(c)
        offs.append(o)
        wts.append(w)
    return (torch.from_numpy(np.stack(imgs))[:, None], torch.from_numpy(np.stack(clss)),
            torch.from_numpy(np.stack(offs)), torch.from_numpy(np.stack(wts)))
