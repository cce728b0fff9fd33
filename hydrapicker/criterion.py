"""Targets and losses: anchor assignment (encode), focal loss, centre L1, head-bias tie.

Anchors are the cells of the output grid (one per ``stride`` x ``stride`` pixels of the rescaled image).
A particle is assigned to the cell that contains its centre (the released code's "single best anchor";
a particle of ~16-21 px cannot reach IoU 0.6 with a 8-16 px anchor) and, for models trained with a wider
``reach`` (model metadata ``assign_reach``), to the neighbour cells whose centres lie near it.
The offset channels are decoded as
``centre = cell_centre + tanh(a) * 0.75 * stride``; :func:`encode` and :func:`hydrapicker.postprocess.decode_grid`
are exact inverses (tested).

Sparse labels: cells may be marked *ignored* (``weight`` 0) so that unlabelled particles are not taught
as background (few-shot, partially picked micrographs).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import defaults
from .postprocess import OFFSET_RANGE


def encode(xy: np.ndarray, grid_shape, stride: int, reach: float = defaults.ASSIGN_REACH_OWN_CELL):
    """Truth centres (N, 2) in rescaled px -> (cls (H, W) float, offsets (2, H, W), pos mask (H, W)).

    Coordinates are pixel indices (pixel k has its centre at k); the cell (i, j) has its centre at
    ((j + 0.5) * stride - 0.5, (i + 0.5) * stride - 0.5).

    ``reach`` (stride units): a particle is assigned to the cell holding its centre and to every cell
    whose centre lies within ``reach`` of it along both axes (0.5: the holding cell only; 0.7 also teaches
    the neighbour cells of a particle near a cell border to decode *its* centre, so whichever of them wins
    suppression is well centred: issue 18). A cell claimed by two particles keeps the nearer one (the other
    particle's cells stay positive). Offsets are in units of the stride, within +-max(reach, 0.5).
    """
    if not 0.0 <= reach < OFFSET_RANGE:
        raise ValueError(f"assignment reach {reach} must lie in [0, {OFFSET_RANGE}) strides")
    H, W = grid_shape
    cls = np.zeros((H, W), np.float32)
    off = np.zeros((2, H, W), np.float32)
    best = np.full((H, W), np.inf)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    for x, y in xy:
        # pixel k has its centre at coordinate k; cell j covers pixels j*s .. j*s+s-1
        u, v = (x + 0.5) / stride, (y + 0.5) / stride
        j0, i0 = int(np.floor(u)), int(np.floor(v))
        if not (0 <= i0 < H and 0 <= j0 < W):
            continue
        for i in range(max(i0 - 1, 0), min(i0 + 2, H)):
            dy = v - (i + 0.5)
            if i != i0 and abs(dy) >= reach:
                continue
            for j in range(max(j0 - 1, 0), min(j0 + 2, W)):
                dx = u - (j + 0.5)
                if j != j0 and abs(dx) >= reach:
                    continue
                d = dx * dx + dy * dy
                if d < best[i, j]:
                    best[i, j] = d
                    cls[i, j] = 1.0
                    off[0, i, j], off[1, i, j] = dx, dy
    return cls, off, cls > 0


def focal_loss(logits, target, weight=None, alpha: float = 0.25, gamma: float = 2.0):
    """Sum of the sigmoid focal loss over cells (RetinaNet form), optionally weighted per cell."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    loss = a_t * (1 - p_t) ** gamma * ce
    if weight is not None:
        loss = loss * weight
    return loss.sum()


def centre_l1(pred_offsets, target_offsets, pos):
    """L1 between decoded and true centres over positive cells, in units of the stride."""
    if pos.sum() == 0:
        return pred_offsets.sum() * 0.0
    decoded = torch.tanh(pred_offsets) * OFFSET_RANGE
    diff = (decoded - target_offsets).abs().sum(dim=1)
    return diff[pos].sum()


def distillation_loss(student_logits, teacher_logits, weight=None):
    """Sum over cells of the Bernoulli KL divergence KL(teacher || student) of the classification channel:
    zero where the student's probabilities equal the teacher's (learning without forgetting, Li & Hoiem
    2016: the teacher's answers on data without the new task keep the old task)."""
    with torch.no_grad():
        soft = torch.sigmoid(teacher_logits)
        entropy = F.binary_cross_entropy_with_logits(teacher_logits, soft, reduction="none")
    kl = F.binary_cross_entropy_with_logits(student_logits, soft, reduction="none") - entropy
    if weight is not None:
        kl = kl * weight
    return kl.sum()


def positives(cls) -> float:
    """The losses' normaliser: the number of labelled positive cells (at least 1)."""
    return max(float((cls > 0.5).sum()), 1.0)


def head_bias_loss(net, dataset_heads, generic: str = "generic"):
    """(1/N) sum_k ||W_k - W_generic||_2 over the dataset heads (unsquared L2 over all head parameters)."""
    g = dict(net.heads[generic].named_parameters())
    total, n = 0.0, 0
    for name in dataset_heads:
        if name == generic:
            continue
        sq = sum(((p - g[k]) ** 2).sum() for k, p in net.heads[name].named_parameters())
        total = total + torch.sqrt(sq + 1e-12)
        n += 1
    return total / max(n, 1)


class Criterion(torch.nn.Module):
    """``L = lambda_loc * L_loc + lambda_cls * L_cls`` normalised by the number of positives."""

    def __init__(self, alpha=0.25, gamma=2.0, lambda_loc=1.0, lambda_cls=1.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma
        self.lambda_loc, self.lambda_cls = lambda_loc, lambda_cls

    def forward(self, out, cls, off, weight=None, soft=None):
        """out (B, 3, H, W); cls (B, H, W) 0/1 labels; off (B, 2, H, W); weight (B, H, W) or None.

        ``soft`` (B, H, W), optional: classification targets in [0, 1] used instead of ``cls`` (e.g. the
        probability that an unlabelled cell holds a particle); localisation stays on the labelled cells.
        """
        logits = out[:, 2]
        pos = cls > 0.5
        n_pos = positives(cls)
        target = cls if soft is None else soft
        l_cls = focal_loss(logits, target, weight, self.alpha, self.gamma) / n_pos
        l_loc = centre_l1(out[:, :2], off, pos) / n_pos
        total = self.lambda_cls * l_cls + self.lambda_loc * l_loc
        return total, {"cls": float(l_cls.detach()), "loc": float(l_loc.detach())}
