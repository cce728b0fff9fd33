"""The core's vocabulary: :class:`Micrograph` (what to pick) and :class:`Picks` (what was picked).

Conventions everywhere: coordinates are pixels of the micrograph *as stored* (x = column, y = row,
0-based); sizes given by users are in Angstrom; the figure of merit (FOM) is higher = better.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class Micrograph:
    """One micrograph to pick.

    path: file to read (already resolved so that it opens from the current directory).
    pixel_size: Angstrom per pixel of the file as stored (None = take it from the MRC header).
    name: the identifier the caller wants back (e.g. RELION's ``_rlnMicrographName`` exactly as in the
        STAR file, or a CryoSPARC exposure uid); defaults to ``path``.
    shape: (ny, nx) when known.
    meta: anything else the caller wants carried along (CTF fields, optics group, uid...).
    """

    path: str
    pixel_size: Optional[float] = None
    name: Optional[str] = None
    shape: Optional[tuple] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.path = str(self.path)
        if self.name is None:
            self.name = self.path


class Picks:
    """Picked particle centres of one micrograph: ``x`` (column), ``y`` (row), ``fom`` (higher = better).

    Coordinates are float pixels of the micrograph as stored, 0-based.
    """

    __slots__ = ("x", "y", "fom")

    def __init__(self, x=(), y=(), fom=None):
        self.x = np.asarray(x, dtype=np.float64).reshape(-1)
        self.y = np.asarray(y, dtype=np.float64).reshape(-1)
        self.fom = (np.zeros_like(self.x) if fom is None
                    else np.asarray(fom, dtype=np.float64).reshape(-1))
        if not (len(self.x) == len(self.y) == len(self.fom)):
            raise ValueError("Picks: x, y and fom must have the same length")

    @classmethod
    def empty(cls) -> "Picks":
        return cls()

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return f"Picks(n={len(self)})"

    def subset(self, keep) -> "Picks":
        return Picks(self.x[keep], self.y[keep], self.fom[keep])

    def above(self, threshold: Optional[float]) -> "Picks":
        """The picks whose FOM is >= threshold (all of them when threshold is None)."""
        if threshold is None:
            return self
        return self.subset(self.fom >= threshold)

    def sorted(self) -> "Picks":
        """Highest FOM first."""
        return self.subset(np.argsort(-self.fom, kind="stable"))

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame({"x": self.x, "y": self.y, "fom": self.fom})

    @classmethod
    def from_frame(cls, df) -> "Picks":
        fom = df["fom"].to_numpy() if "fom" in df else None
        return cls(df["x"].to_numpy(), df["y"].to_numpy(), fom)

    def xy(self) -> np.ndarray:
        return np.stack([self.x, self.y], axis=1) if len(self) else np.zeros((0, 2))


@dataclass
class PickResult:
    """What :meth:`hydrapicker.picker.Picker.pick` yields for each micrograph.

    ``picks`` (the final picks) is None when ``error`` is set (the micrograph was reported and skipped);
    ``candidates``: every pick above the floor, before the threshold (for FOM histograms, CBOX files).
    ``info`` holds timings and the scale used (``scale``: rescaled px per original px).
    """

    micrograph: Micrograph
    picks: Optional[Picks]
    error: Optional[BaseException] = None
    info: dict[str, Any] = field(default_factory=dict)
    candidates: Optional[Picks] = None

    @property
    def ok(self) -> bool:
        return self.error is None
