"""CryoSPARC exposure datasets -> :class:`hydrapicker.types.Micrograph` lists.

An exposure row gives the micrograph's project-relative path (``micrograph_blob/path``), its shape
``[ny, nx]`` and pixel size. The micrograph is read from the project directory when it is visible on
this machine (shared filesystem), otherwise downloaded through the API one at a time.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from hydrapicker.errors import MicrographError, UserFacingError
from hydrapicker.types import Micrograph

REQUIRED_FIELDS = ["uid", "micrograph_blob/path", "micrograph_blob/shape", "micrograph_blob/psize_A"]


class ExposureDatasetError(UserFacingError):
    """An exposure dataset lacks the micrograph fields."""


def _exp_group_ids(dset) -> np.ndarray:
    for f in ("mscope_params/exp_group_id", "ctf/exp_group_id"):
        if f in dset.fields():
            return np.asarray(dset[f]).astype(np.uint32)
    return np.zeros(len(dset), dtype=np.uint32)


def exposures_to_micrographs(dset, project_dir=None, source: str = "exposures") -> list:
    """One :class:`Micrograph` per exposure row, in the dataset's order.

    ``path`` is ``project_dir / micrograph_blob/path`` (or the stored path when it is absolute or no
    project directory is given); ``name`` is the exposure uid as a string (unique; the join key);
    ``shape`` is ``(ny, nx)``; ``meta`` keeps ``uid``, ``cs_path`` (exactly as stored), ``shape``,
    ``psize_A`` and ``exp_group_id`` for writing the picks back.
    """
    missing = [f for f in REQUIRED_FIELDS if f not in dset.fields()]
    if missing:
        raise ExposureDatasetError(
            f"{source}: not an exposure dataset with micrographs (missing {', '.join(missing)}); "
            f"use the output of Patch CTF ('exposures'), Curate Exposures ('exposures_accepted') or "
            f"Patch Motion ('micrographs')")
    uids = np.asarray(dset["uid"]).astype(np.uint64)
    paths = dset["micrograph_blob/path"]
    shapes = np.asarray(dset["micrograph_blob/shape"]).reshape(len(dset), -1)
    psizes = np.asarray(dset["micrograph_blob/psize_A"], dtype=np.float64)
    groups = _exp_group_ids(dset)
    mics = []
    for i in range(len(dset)):
        cs_path = paths[i].decode() if isinstance(paths[i], bytes) else str(paths[i])
        if not cs_path:
            raise ExposureDatasetError(f"{source}: exposure {int(uids[i])} has an empty micrograph_blob/path "
                                       f"(its micrograph was never written; re-run motion correction)")
        shape = tuple(int(v) for v in shapes[i][-2:])
        psize = float(psizes[i])
        local = Path(cs_path)
        if project_dir is not None and not local.is_absolute():
            local = Path(project_dir) / PurePosixPath(cs_path)
        mics.append(Micrograph(
            path=str(local), pixel_size=psize if psize > 0 else None, name=str(int(uids[i])),
            shape=shape,
            meta={"uid": int(uids[i]), "cs_path": cs_path, "shape": shape, "psize_A": psize,
                  "exp_group_id": int(groups[i]),
                  **({"apix_source": "the exposures' micrograph_blob/psize_A"} if psize > 0 else {})},
        ))
    return mics


def check_readable(mics, project_dir, how_to_fix: str) -> None:
    """Fail early, naming the first micrograph that is not on this machine."""
    for mic in mics:
        if not os.path.isfile(mic.path):
            raise MicrographError(
                f"micrograph {mic.meta.get('cs_path', mic.path)} not found at {mic.path} "
                f"(project directory {project_dir}); {how_to_fix}")


def visible_locally(mics) -> bool:
    """True when the first micrograph can be opened here (shared filesystem)."""
    return bool(mics) and os.path.isfile(mics[0].path)


class Downloader:
    """Fetch micrographs through the CryoSPARC API into a scratch directory, one at a time.

    ``fetch(project_uid, cs_path, target)`` is ``cs.download_file`` (or a test double).
    Use as a context manager; the scratch directory is removed at the end.
    """

    def __init__(self, fetch, project_uid: str, scratch: Optional[str] = None):
        self.fetch = fetch
        self.project_uid = project_uid
        self._own = scratch is None
        self.dir = Path(tempfile.mkdtemp(prefix="cryosparc_hydra_")) if scratch is None else Path(scratch)
        self.dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._own:
            shutil.rmtree(self.dir, ignore_errors=True)

    def get(self, mic: Micrograph) -> Micrograph:
        """Download ``mic`` and return a copy whose ``path`` is the local file."""
        cs_path = mic.meta["cs_path"]
        target = self.dir / f"{mic.meta['uid']}_{PurePosixPath(cs_path).name}"
        try:
            self.fetch(self.project_uid, cs_path, str(target))
        except Exception as exc:  # the API says why (e.g. file outside the project directory)
            raise MicrographError(f"could not download {cs_path} from project {self.project_uid}: {exc}. "
                                  f"Micrographs symlinked from another project cannot be downloaded; "
                                  f"run where the project directory is mounted instead") from exc
        return Micrograph(path=str(target), pixel_size=mic.pixel_size, name=mic.name, shape=mic.shape,
                          meta=dict(mic.meta))

    def release(self, mic: Micrograph) -> None:
        if Path(mic.path).parent == self.dir:
            Path(mic.path).unlink(missing_ok=True)
