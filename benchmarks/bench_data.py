"""Benchmark datasets: load a dataset directory, make the simulated ones, score picks against truth.

A dataset directory (the layout of ``../shared/data/real/*`` and of
``hydrapicker.simulate.write_dataset``)::

    Micrographs/*.mrc   a micrographs STAR (micrographs_ctf.star or micrographs.star)
    truth/<stem>.star   meta.json (diameter_A; pixel size as "apix" or "pixel_size")
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REAL_ROOT = Path(os.environ.get("HYDRA_REAL_DATA", REPO.parent / "shared" / "data" / "real"))
STAR_NAMES = ("micrographs_ctf.star", "micrographs.star")


class DatasetError(Exception):
    """A dataset directory lacks something the benchmark needs."""


@dataclass
class Dataset:
    name: str
    root: Path
    mic_names: list            # _rlnMicrographName as in the STAR (relative to root), subset in order
    pixel_size: float          # A/px of the micrographs as stored
    diameter_A: float
    truth: dict = field(default_factory=dict)   # stem -> (N, 2) x, y
    kind: str = "real"         # "real" or "simulated"
    meta: dict = field(default_factory=dict)

    @property
    def stems(self) -> list:
        return [Path(n).name.rsplit(".mrc", 1)[0] for n in self.mic_names]

    @property
    def box_px(self) -> float:
        return self.diameter_A / self.pixel_size

    @property
    def mic_paths(self) -> list:
        return [self.root / n for n in self.mic_names]

    @property
    def n_truth(self) -> int:
        return int(sum(len(v) for v in self.truth.values()))


def _star_path(root: Path) -> Path:
    for name in STAR_NAMES:
        if (root / name).exists():
            return root / name
    raise DatasetError(f"{root}: no micrographs STAR ({' or '.join(STAR_NAMES)}); is this a dataset directory?")


def _star_pixel_size(star: Path):
    import starfile

    blocks = starfile.read(star, always_dict=True)
    optics = blocks.get("optics")
    if optics is not None and "rlnMicrographPixelSize" in optics:
        return float(optics["rlnMicrographPixelSize"].iloc[0])
    return None


def read_truth(path: Path) -> np.ndarray:
    """(N, 2) x, y from one truth STAR; a missing file or an empty table is a particle-free micrograph."""
    from hydrapicker.coords import read_coords

    if not path.exists():
        return np.zeros((0, 2))
    got = read_coords(path)
    return next(iter(got.values())).xy().reshape(-1, 2) if got else np.zeros((0, 2))


def load_dataset(root, n_micrographs=None, kind=None) -> Dataset:
    """Load a dataset directory (first ``n_micrographs`` micrographs of its STAR when given)."""
    import starfile

    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    meta_path = root / "meta.json"
    if not meta_path.exists():
        raise DatasetError(f"{root}: no meta.json (needs diameter_A and the pixel size)")
    meta = json.loads(meta_path.read_text())
    star = _star_path(root)
    blocks = starfile.read(star, always_dict=True)
    mics = blocks.get("micrographs")
    if mics is None:  # pre-3.1: one unnamed block
        mics = next(iter(blocks.values()))
    if "rlnMicrographName" not in mics:
        raise DatasetError(f"{star}: no _rlnMicrographName column")
    names = [str(n) for n in mics["rlnMicrographName"]]
    if n_micrographs:
        names = names[: int(n_micrographs)]
    apix = meta.get("apix", meta.get("pixel_size")) or _star_pixel_size(star)
    if not apix or "diameter_A" not in meta:
        raise DatasetError(f"{meta_path}: needs diameter_A and apix/pixel_size")
    ds = Dataset(name=meta.get("target", meta.get("name", root.name)), root=root, mic_names=names,
                 pixel_size=float(apix), diameter_A=float(meta["diameter_A"]),
                 kind=kind or ("simulated" if meta.get("simulator") else "real"), meta=meta)
    ds.truth = {s: read_truth(root / "truth" / f"{s}.star") for s in ds.stems}
    return ds


def write_micrographs_star(path: Path, ds: Dataset) -> None:
    """A RELION 3.1 micrographs STAR of ``ds``'s (subset of) micrographs, names relative to a project
    directory in which ``Micrographs`` (or whatever the names start with) links to the dataset's."""
    from hydrapicker.atomic import write_text

    p = ds.pixel_size
    lines = ["", "# version 30001", "", "data_optics", "", "loop_",
             "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2", "_rlnMicrographOriginalPixelSize #3",
             "_rlnVoltage #4", "_rlnSphericalAberration #5", "_rlnAmplitudeContrast #6",
             "_rlnMicrographPixelSize #7", f"opticsGroup1\t1\t{p:.6f}\t300.000000\t2.700000\t0.100000\t{p:.6f}",
             "", "", "# version 30001", "", "data_micrographs", "", "loop_",
             "_rlnMicrographName #1", "_rlnOpticsGroup #2"]
    lines += [f"{n}\t1" for n in ds.mic_names]
    write_text(path, "\n".join(lines) + "\n\n")


def make_project(work: Path, ds: Dataset) -> Path:
    """A scratch RELION-style project: top-level links to the dataset's micrograph folders + a STAR."""
    work.mkdir(parents=True, exist_ok=True)
    for top in sorted({Path(n).parts[0] for n in ds.mic_names if len(Path(n).parts) > 1}):
        link = work / top
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == (ds.root / top).resolve():
                continue
            raise DatasetError(f"{link} exists and is not a link to {ds.root / top}; use a fresh --work")
        link.symlink_to(ds.root / top)
    write_micrographs_star(work / "micrographs.star", ds)
    return work / "micrographs.star"


# ------------------------------------------------------------------------------------------- sets
def real_set_dirs() -> list:
    if not REAL_ROOT.is_dir():
        return []
    return sorted(p for p in REAL_ROOT.iterdir() if (p / "meta.json").exists())


def target_names() -> list:
    from hydrapicker.simulate import target_dataset_specs

    return [s.name for s in target_dataset_specs()]


def simulated_dataset(spec, cache: Path, n: int, log=print) -> Path:
    """Write ``n`` micrographs of ``spec`` under ``cache/<name>`` once (deterministic by seed), reuse after."""
    from hydrapicker.simulate import write_dataset

    out = cache / f"{spec.name}_n{n}"
    done = out / ".complete"
    if done.exists():
        return out
    import time

    t0 = time.time()
    log(f"[bench] simulating {n} micrographs of {spec.name} ({spec.shape[1]}x{spec.shape[0]}, "
        f"{spec.pixel_size} A/px) into {out}")
    # in a child process: the pickers are timed as children of this one, and a child's peak RSS as the
    # kernel reports it includes the parent's memory up to its exec (several GB after simulating K3 frames)
    import multiprocessing as mp

    proc = mp.get_context("spawn").Process(target=write_dataset, args=(spec, out, n))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"simulating {spec.name} failed (exit code {proc.exitcode})")
    done.write_text(json.dumps({"seconds": time.time() - t0}))
    return out


def tuning_sets(n: int, cache: Path, n_micrographs: int = 3) -> list:
    """The experiments' tuning sets: ``n`` random data sets of the training families (seeds 7100...; never a
    benchmark target or a real set), ``n_micrographs`` each -> [(folder, "simulated")]."""
    from hydrapicker.simulate.datasets import random_dataset_spec

    return [(simulated_dataset(random_dataset_spec(7100 + k, name=f"tune_fuse_{k}"), Path(cache), n_micrographs),
             "simulated") for k in range(n)]


def resolve_sets(tokens, n_micrographs, cache: Path, n_sim: int, log=print) -> list:
    """Turn ``--sets`` tokens into dataset directories: ``real`` (every real set), ``targets`` (every
    simulated target), a real set's name, a target name (``t_rod``) or a dataset directory."""
    from hydrapicker.simulate import get_target

    out = []
    for tok in tokens:
        if tok == "real":
            out += [(p, "real") for p in real_set_dirs()]
        elif tok == "targets":
            for name in target_names():
                out.append((simulated_dataset(get_target(name), cache, n_sim, log), "simulated"))
        elif (REAL_ROOT / tok).is_dir():
            out.append((REAL_ROOT / tok, "real"))
        elif Path(tok).is_dir():
            out.append((Path(tok), None))
        else:
            try:
                spec = get_target(tok)
            except KeyError:
                raise DatasetError(f"--sets: '{tok}' is neither 'real', 'targets', a real set in {REAL_ROOT}, "
                                   f"a target ({', '.join(target_names())}) nor a dataset directory") from None
            out.append((simulated_dataset(spec, cache, n_sim, log), "simulated"))
    return out


# ------------------------------------------------------------------------------------------- scoring
def score(picks: dict, ds: Dataset) -> dict:
    """AP (IoU > 0.6 of D x D boxes), AP within D/2, max F1... with :func:`hydrapicker.metrics.evaluate`."""
    from hydrapicker.metrics import evaluate, summary

    res = evaluate({k: v for k, v in picks.items() if k in ds.truth}, ds.truth, ds.box_px,
                   warn=lambda m: None)
    out = summary(res)
    out["extra_micrographs"] = sorted(k for k in picks if k not in ds.truth)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
