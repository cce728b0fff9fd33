#!/usr/bin/env python
"""Experiment (issue 14): where the junk benchmark's gap between clean and junk AP comes from.

Reads the picks a ``benchmarks/junk.py --pickers hydra`` run left in its work folder (``--work``) and its JSON
(the best-F1 threshold of each junk target). On the micrographs that hold particles, at that threshold, for
the junk micrographs and their clean twins: true picks (IoU 0.6 rule), picks within D/2 of a particle but
off-centre, and picks further from every particle (false picks); then, on the junk micrographs, the particles
within D/2 of a border band or dead area (``hydrapicker.regions``; the pick path keeps no pick within
``defaults.INVALID_MARGIN_DIAMETERS`` of them, half a diameter until 2026-12-07) and how many of them and of
the others were found; and, per kind of junk a particle lies within D/2 of (:data:`KINDS`, from the
simulator's scene drawn again; a vesicle's particles split into those within D/2 of its membrane and those
further inside), how many of those particles were found on the clean twin and on the junk micrograph (the
same particles at the same places). Nothing is picked again.

  python benchmarks/junk.py --pickers hydra --n-sim 18 --work W --json J
  python benchmarks/experiments/junk_gap_parts.py --work W --results J --n-sim 18
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def counts(picks, truth, box, thr):
    """((true, off-centre, false) picks at or above ``thr`` on one micrograph, found: bool per particle under the
    IoU rule)."""
    from hydrapicker.metrics import match_greedy
    from hydrapicker.types import Picks

    keep = picks.fom >= thr
    q = Picks(picks.x[keep], picks.y[keep], picks.fom[keep])
    iou, found = match_greedy(q, truth, box)
    centre, _ = match_greedy(q, truth, box, centre=True)
    return (int((iou >= 0).sum()), int(((iou < 0) & (centre >= 0)).sum()), int((centre < 0).sum())), found >= 0


#: the kinds of junk a particle may lie beside, in the order a particle is counted under (its first)
KINDS = ("band", "opaque", "carbon_film", "clump_or_rim", "vesicle_membrane", "vesicle_inside", "own_aggregate",
         "thin_carbon", "none")


def junk_kind_maps(spec, index: int) -> dict:
    """The simulator's junk of micrograph ``index`` as image-shaped boolean maps, by kind (the scene is drawn
    again, the image is not formed): opaque (contamination, crystals, gold), carbon film, clumps of other
    proteins and contamination rims, vesicles, aggregates of the dataset's own particles; thin carbon as a flag."""
    from hydrapicker.simulate import micrograph as sim

    sc = sim._new_scene(spec, index)
    sim._draw_support(sc)
    vesicles = sc.marks.copy()
    sim._place_particles(sc)
    ny, nx = spec.shape
    crop = (slice(sc.margin, sc.margin + ny), slice(sc.margin, sc.margin + nx))
    occupied = sc.layers.occupied if sc.layers is not None else np.zeros_like(sc.contam)
    carbon = sc.carbon if sc.carbon is not None else np.zeros_like(sc.contam)
    maps = {"opaque": sc.contam, "carbon_film": carbon, "clump_or_rim": occupied, "vesicle": vesicles,
            "own_aggregate": np.maximum(sc.marks - vesicles, 0)}
    out = {k: v[crop] > 0.5 for k, v in maps.items()}
    out["thin_carbon"] = bool(sc.layers is not None and sc.layers.counts.get("thin_carbon"))
    return out


def kind_of_particles(truth, maps: dict, band_near, radius: float) -> np.ndarray:
    """The first kind in :data:`KINDS` each particle lies within ``radius`` px of (``band_near``: bool per
    particle, from the pick path's own band finder)."""
    from scipy.ndimage import distance_transform_edt

    kinds = np.full(len(truth), "none", dtype=object)
    ix = np.clip(np.round(truth).astype(int), 0, [maps["opaque"].shape[1] - 1, maps["opaque"].shape[0] - 1])
    for k in reversed(KINDS[1:-1]):
        if k == "thin_carbon":
            if maps[k]:
                kinds[:] = k
            continue
        if k == "vesicle_inside":  # inside a vesicle's disc, further than ``radius`` from its membrane
            if maps["vesicle"].any():
                kinds[distance_transform_edt(maps["vesicle"])[ix[:, 1], ix[:, 0]] > radius] = k
            continue
        m = maps["vesicle" if k == "vesicle_membrane" else k]
        if m.any():
            near = distance_transform_edt(~m)[ix[:, 1], ix[:, 0]] <= radius
            kinds[near & (kinds != "vesicle_inside")] = k
    kinds[band_near] = "band"
    return kinds


def paired(junk_truth, clean_truth, clean_found) -> np.ndarray:
    """Whether each junk micrograph's particle was found on its clean twin (the same particle, same place)."""
    if not len(junk_truth):
        return np.zeros(0, bool)
    d = np.hypot(junk_truth[:, None, 0] - clean_truth[None, :, 0], junk_truth[:, None, 1] - clean_truth[None, :, 1])
    j = d.argmin(axis=1)
    assert (d[np.arange(len(junk_truth)), j] < 0.5).all(), "the clean twin lacks a particle of its junk micrograph"
    return clean_found[j]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="junk.py's --work folder")
    ap.add_argument("--results", required=True, help="junk.py's --json")
    ap.add_argument("--n-sim", type=int, default=18)
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import mrcfile

    from bench_data import load_dataset, simulated_dataset
    from bench_pickers import Run, _read
    from hydrapicker.regions import find_regions, near_invalid
    from hydrapicker.simulate.datasets import clean_version, junk_target_specs

    res = json.loads(Path(args.results).read_text())
    thr = {t["target"]: t["pickers"]["hydra"]["junk"]["threshold"] for t in res["targets"]}
    cache, work = Path(args.sim_cache), Path(args.work)
    rows = []
    for spec in junk_target_specs():
        if spec.name not in thr:
            continue
        t_cut = thr[spec.name]
        junk = load_dataset(simulated_dataset(spec, cache, args.n_sim), kind="simulated")
        clean = load_dataset(simulated_dataset(clean_version(spec), cache, args.n_sim), kind="simulated")
        junk_only = {m["name"] for m in junk.meta["micrographs"] if m.get("junk_only")}
        row = {"target": spec.name, "threshold": t_cut}
        found_by = {}
        for label, ds in (("clean", clean), ("junk", junk)):
            run = Run("hydra")
            _read(run, work / ds.name / "hydra" / "picks", ds.stems)
            tot = np.zeros(3, int)
            n_truth = 0
            near = {"truth": 0, "found": 0}
            far = {"truth": 0, "found": 0}
            by_kind = {}
            for s, path in zip(ds.stems, ds.mic_paths):
                if s.replace(spec.name + "_clean", spec.name) in junk_only:
                    continue
                truth = ds.truth[s]
                kinds, found = counts(run.picks[s], truth, ds.box_px, t_cut)
                tot += kinds
                n_truth += len(truth)
                found_by[(label, s.replace(spec.name + "_clean", spec.name))] = (truth, found)
                if label == "junk" and len(truth):
                    close = near_invalid(find_regions(mrcfile.read(path).astype(np.float32)), truth[:, 0],
                                         truth[:, 1], 0.5 * ds.box_px)
                    near["truth"] += int(close.sum())
                    near["found"] += int(found[close].sum())
                    far["truth"] += int((~close).sum())
                    far["found"] += int(found[~close].sum())
                    index = int(s.rsplit("_", 1)[1])
                    kind = kind_of_particles(truth, junk_kind_maps(spec, index), close, 0.5 * ds.box_px)
                    was = paired(truth, *found_by[("clean", s)])
                    for k in KINDS:
                        on = kind == k
                        b = by_kind.setdefault(k, {"particles": 0, "found_clean": 0, "found_junk": 0})
                        b["particles"] += int(on.sum())
                        b["found_clean"] += int(was[on].sum())
                        b["found_junk"] += int(found[on].sum())
            row[label] = {"particles": n_truth, "true": int(tot[0]), "off_centre": int(tot[1]), "false": int(tot[2]),
                          "recall": round(tot[0] / max(n_truth, 1), 4)}
            if label == "junk":
                row[label]["near_invalid"] = near
                row[label]["recall_elsewhere"] = round(far["found"] / max(far["truth"], 1), 4)
                row[label]["by_kind"] = by_kind
        rows.append(row)
        j, c = row["junk"], row["clean"]
        print(f"{spec.name:14s} recall clean {c['recall']:.3f} junk {j['recall']:.3f} (elsewhere than near "
              f"bands/dead areas {j['recall_elsewhere']:.3f}; near them {j['near_invalid']['found']} of "
              f"{j['near_invalid']['truth']}); false picks clean {c['false']} junk {j['false']}; off-centre "
              f"{c['off_centre']} / {j['off_centre']}", flush=True)
        lost = sum(b["found_clean"] - b["found_junk"] for b in j["by_kind"].values())
        print("   beside (particles: found on the clean twin -> on junk; share of the net loss): " + "; ".join(
            f"{k} {b['particles']}: {b['found_clean']} -> {b['found_junk']} "
            f"({(b['found_clean'] - b['found_junk']) / max(lost, 1):.0%})"
            for k, b in j["by_kind"].items() if b["particles"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
