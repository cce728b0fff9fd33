#!/usr/bin/env python
"""Experiment (issue 14): where the false picks on the junk targets lie, from a junk benchmark run's picks.

For each target of a ``benchmarks/junk.py`` results JSON (``--results``) and its work folder (``--work``,
the run's ``<target>/hydra/picks``), the picks at the target's best-F1 threshold further than D/2 from every
particle are sorted by what lies under them, from the simulator's scene drawn again (not the image):
a member of an aggregate of the dataset's own particles (never in the truth) that stands a diameter or more
from every other particle (an isolated particle the truth calls junk), one 0.7-1 D from its nearest (touching),
one closer (overlapped), or anything else; and by their distance to the micrograph's edge. Separately for
the particle-free micrographs and for those with particles.

  python benchmarks/experiments/false_picks_where.py --results docs/benchmarks/junk18_three_pickers_2026-12-07.json \\
      --work /tmp/hydra_bench/junk_all18 --sim-cache /tmp/hydra_bench/sim

Result (2026-12-07, tenth session; 18 micrographs per target, default model): on j_ribosome 21 of the 36 false
picks on particle-free micrographs are on aggregate members (6 isolated, 9 touching, 6 overlapped); on
j_proteasome none (25 others, 11 of them within D/2 of an edge, where 10 % of the area is); on j_small80kda 3
of 343 and on j_dumbbell_pp 7 of 58. Of all aggregate members 13-25 % stand a diameter or more from every
other particle (the simulator scatters an aggregate's members with a normal spread of 0.35 D sqrt(k)).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def aggregate_members(spec, index: int) -> tuple:
    """(members (M, 2) px of the micrograph, their nearest-other-particle distance in D) of micrograph
    ``index``: the particles the simulator placed that are not in its truth (aggregates of its own particles)."""
    from scipy.spatial import cKDTree

    from hydrapicker.simulate import micrograph as sim

    sc = sim._new_scene(spec, index)
    placed = []
    add = sc.add_particle
    sc.add_particle = lambda rot, cx, cy: (placed.append((cx, cy)), add(rot, cx, cy))
    sim._draw_support(sc)
    sim._place_particles(sc)
    truth = {tuple(np.round(p, 6)) for p in np.asarray(sc.truth, float).reshape(-1, 2) + sc.margin}  # canvas px
    every = np.asarray(placed, float).reshape(-1, 2)
    member = np.array([tuple(np.round(p, 6)) not in truth for p in every], bool)
    if not member.any():
        return np.zeros((0, 2)), np.zeros(0)
    dist, _ = cKDTree(every).query(every[member], 2)
    return every[member] - sc.margin, dist[:, 1] / sc.d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", required=True, help="benchmarks/junk.py's results JSON")
    ap.add_argument("--work", required=True, help="that run's work folder")
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import starfile

    from hydrapicker.simulate.datasets import DatasetSpec

    res = json.loads(Path(args.results).read_text())
    out = []
    for t in res["targets"]:
        name, thr = t["target"], t["pickers"]["hydra"]["junk"]["threshold"]
        sim_dir = Path(args.sim_cache) / f"{name}_n{res['n_sim']}"
        meta = json.loads((sim_dir / "meta.json").read_text())
        spec = DatasetSpec.from_dict(meta["spec"])
        ny, nx = meta["shape"]
        kinds = ("isolated_member", "touching_member", "overlapped_member", "other")
        row = {"target": name, "threshold": thr, "members": 0, "members_isolated": 0}
        for group in ("particle_free", "with_particles"):
            row[group] = {k: 0 for k in kinds + ("within_half_D_of_edge",)}
        for i, mic in enumerate(meta["micrographs"]):
            members, nn = aggregate_members(spec, i)
            row["members"] += len(nn)
            row["members_isolated"] += int((nn >= 1).sum())
            d = float(meta["diameter_px"])
            picks = starfile.read(Path(args.work) / name / "hydra" / "picks" / f"{mic['name']}_hydra.star")
            picks = picks[picks["rlnAutopickFigureOfMerit"] >= thr]
            xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
            truth = starfile.read(sim_dir / "truth" / f"{mic['name']}.star")
            txy = truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float) if len(truth) else np.zeros((0, 2))
            group = row["particle_free" if len(txy) == 0 else "with_particles"]
            for q in xy:
                if len(txy) and np.hypot(*(txy - q).T).min() < d / 2:
                    continue  # near a particle: not a false pick
                edge = min(q[0], q[1], nx - 1 - q[0], ny - 1 - q[1])
                group["within_half_D_of_edge"] += int(edge < d / 2)
                k = "other"
                if len(members):
                    dist = np.hypot(*(members - q).T)
                    j = int(np.argmin(dist))
                    if dist[j] < d / 2:
                        k = kinds[0 if nn[j] >= 1 else 1 if nn[j] >= 0.7 else 2]
                group[k] += 1
        out.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
