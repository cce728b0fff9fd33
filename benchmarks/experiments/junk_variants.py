#!/usr/bin/env python
"""Experiment (issue 14): which part of a kind of junk costs the particles near it: its physics or the picker?

Renders the junk targets again with one part of one kind of junk left out, every random draw unchanged (the
same particles, junk and noise at the same places: ``artefacts.thin_carbon`` and ``artefacts.vesicle`` take
the part to leave out as a keyword, and by default draw and render as before, image for image), and runs ``benchmarks/junk.py`` (ours alone) on each variant beside the unchanged targets:

* thin carbon (``artefacts.thin_carbon``) lays a phase layer (20-100 A of carbon with a smooth texture), an
  amplitude offset and more structural noise (its amplitude times 1.2-1.8: the film's own granular
  scattering) where it lies. ``film_without_noise``: the film's phase and amplitude, not its noise;
  ``noise_without_film``: its noise alone. If the junk AP comes back with the film but without its noise and
  is lost with the noise alone, the gap is the lower SNR the film gives the particles on it (their clean
  twins have no film), not carbon mistaken for particles.
* a vesicle (``artefacts.vesicle``) projects as a membrane ring (the bilayer edge-on) and, inside it, the two
  caps (the bilayer face-on, over and under a particle inside). ``vesicles_without_caps``: the ring alone. If
  the particles inside vesicles are found again without the caps, the caps' density over them costs them;
  if not, the ring around them does (the picker's context).

Per variant the junk AP and, with ``--gap-parts``, ``junk_gap_parts.py``'s particles found by kind of junk.

  python benchmarks/experiments/junk_variants.py --variants film_without_noise noise_without_film \
      --targets j_small80kda j_dumbbell_pp --n-sim 18 --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

#: each variant: the simulator's function it changes and the keywords it is called with
PARTS = {"film_without_noise": ("thin_carbon", {"noise": False}),
         "noise_without_film": ("thin_carbon", {"film": False}),
         "vesicles_without_caps": ("vesicle", {"caps": False})}


@contextlib.contextmanager
def simulator_variant(variant: str):
    """Within it, the simulator renders ``variant`` (:data:`PARTS`); outside, as it always does."""
    from hydrapicker.simulate import artefacts

    name, keywords = PARTS[variant]
    original = getattr(artefacts, name)
    setattr(artefacts, name, functools.partial(original, **keywords))  # a nested vesicle calls it again
    try:
        yield
    finally:
        setattr(artefacts, name, original)


def simulate_variant(spec, n, cache: Path, variant: str) -> None:
    """Write ``spec``'s junk micrographs as ``variant`` into ``cache`` under the name junk.py looks for."""
    from hydrapicker.simulate import write_dataset

    out = cache / f"{spec.name}_n{n}"
    if (out / ".complete").exists():
        return
    with simulator_variant(variant):
        write_dataset(spec, out, n)
    (out / ".complete").write_text(json.dumps({"variant": variant}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", nargs="+", default=["j_small80kda", "j_dumbbell_pp"])
    ap.add_argument("--n-sim", type=int, default=18)
    ap.add_argument("--variants", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--gap-parts", action="store_true", help="also junk_gap_parts.py on each variant's picks")
    ap.add_argument("--work", default="/tmp/hydra_bench/junk_variants")
    ap.add_argument("--sim-cache", default="/tmp/hydra_bench/sim", help="the unchanged targets (junk.py's cache)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)

    import junk
    import junk_gap_parts
    from hydrapicker.simulate.datasets import clean_version, junk_target_specs

    specs = {s.name: s for s in junk_target_specs()}
    work = Path(args.work)
    results = {}
    parts = {}
    for variant in ["as_simulated"] + args.variants:
        cache = Path(args.sim_cache) if variant == "as_simulated" else work / variant / "sim"
        if variant != "as_simulated":
            cache.mkdir(parents=True, exist_ok=True)
            for t in args.targets:
                simulate_variant(specs[t], args.n_sim, cache, variant)
                # the clean twins show no junk at all: the unchanged ones, simulated once
                twin = f"{clean_version(specs[t]).name}_n{args.n_sim}"
                junk.simulated_dataset(clean_version(specs[t]), Path(args.sim_cache), args.n_sim)
                if not (cache / twin).exists():
                    os.symlink(Path(args.sim_cache).resolve() / twin, cache / twin)
        out = work / variant / "junk.json"
        junk.main(["--pickers", "hydra", "--n-sim", str(args.n_sim), "--targets", *args.targets,
                   "--threads", str(args.threads), "--work", str(work / variant / "picks"),
                   "--sim-cache", str(cache), "--json", str(out)])
        results[variant] = json.loads(out.read_text())
        if args.gap_parts:
            junk_gap_parts.main(["--work", str(work / variant / "picks"), "--results", str(out), "--n-sim",
                                 str(args.n_sim), "--sim-cache", str(cache), "--json", str(work / variant / "parts.json")])
            parts[variant] = json.loads((work / variant / "parts.json").read_text())["rows"]
    print("\n| target | variant | AP clean | AP junk | gap | picks / particle-free mic |\n|---|---|---|---|---|---|")
    summary = []
    for t in args.targets:
        for variant, res in results.items():
            h = next(r for r in res["targets"] if r["target"] == t)["pickers"]["hydra"]
            c, j = h["clean"], h["junk"]
            summary.append({"target": t, "variant": variant, "ap_clean": round(c["AP"], 4),
                            "ap_junk": round(j["AP"], 4), "gap": round(c["AP"] - j["AP"], 4),
                            "ap_junk_with_particles": round(j["AP_with_particles"], 4),
                            "picks_per_particle_free": j["picks_per_particle_free"]})
            print(f"| {t} | {variant} | {c['AP']:.3f} | {j['AP']:.3f} | {c['AP'] - j['AP']:.3f} | "
                  f"{j['picks_per_particle_free']:.1f} |")
    Path(args.json).write_text(json.dumps({"argv": sys.argv, "n_sim": args.n_sim, "summary": summary,
                                           "gap_parts": parts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
