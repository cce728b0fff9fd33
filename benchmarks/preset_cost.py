#!/usr/bin/env python
"""What a larger network preset costs on the CPU: parameters, model file size and seconds per micrograph.

Issue 14 asks to measure a larger preset (accuracy against CPU seconds per micrograph) if the ``lite``
body cannot tell junk from particles. This prints the cost side for every preset of
``hydrapicker.model.PRESETS``, on the same simulated micrographs, through the real picking path
(:class:`hydrapicker.picker.Picker`: preparation, tiled forward pass, decoding, suppression): the
shipped default model for ``lite``, a freshly initialised network for the others (the cost of a forward
pass does not depend on the weights). Each micrograph is picked twice and the second, warm time counts.

  python benchmarks/preset_cost.py --threads 2 --size 4096 --n 3
  python benchmarks/preset_cost.py --threads 2 --size 2048 --json preset_cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _model_file(preset: str, folder: Path) -> Path:
    from hydrapicker.checkpoint import DEFAULT_MODEL, make_meta, save_checkpoint
    from hydrapicker.model import build_model

    if preset == "lite":
        return DEFAULT_MODEL
    net = build_model(preset)
    path = folder / f"{preset}_untrained.pt"
    save_checkpoint(path, net, make_meta(net, training={"note": "untrained: cost measurement only"}), half=True)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=None, help="default: every preset")
    p.add_argument("--size", type=int, default=4096, help="micrograph side in pixels (default 4096)")
    p.add_argument("--n", type=int, default=3, help="micrographs (default 3)")
    p.add_argument("--pixel-size", type=float, default=1.0)
    p.add_argument("--diameter", type=float, default=150.0, help="particle diameter in A (default 150)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from hydrapicker.model import PRESETS, count_parameters
    from hydrapicker.picker import Picker, configure_torch
    from hydrapicker.types import Micrograph

    configure_torch(args.threads)
    presets = args.presets or list(PRESETS)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import mrcfile

        mics = []
        for i in range(args.n):  # noise with slow ice-like variation: the cost does not depend on content
            img = rng.normal(0, 1, (args.size, args.size)).astype(np.float32)
            path = tmp / f"mic{i}.mrc"
            with mrcfile.new(path) as m:
                m.set_data(img)
                m.voxel_size = args.pixel_size
            mics.append(Micrograph(str(path), pixel_size=args.pixel_size))
        for preset in presets:
            model = _model_file(preset, tmp)
            picker = Picker(str(model), device="cpu", log=lambda *a, **k: None, refine=False)
            pol = picker.policy(args.diameter, "generic", threshold="model")
            per = []
            for m in mics:
                picker.pick_one(m, args.diameter, policy=pol)  # warm
                t0, c0 = time.perf_counter(), time.process_time()
                picker.pick_one(m, args.diameter, policy=pol)
                per.append((time.perf_counter() - t0, time.process_time() - c0))
            wall, cpu = (float(np.median([x[i] for x in per])) for i in (0, 1))
            rows.append({"preset": preset, "parameters": count_parameters(picker.net),
                         "file_MB": round(os.path.getsize(model) / 2 ** 20, 2), "extent_px": PRESETS[preset].extent_px,
                         "wall_s_per_micrograph": round(wall, 3), "cpu_s_per_micrograph": round(cpu, 3)})
            print(f"[preset_cost] {preset}: {rows[-1]}", flush=True)
    base = next((r for r in rows if r["preset"] == "lite"), rows[0])
    print(f"\n{args.size}² micrographs at {args.pixel_size} A/px, D = {args.diameter:g} A, {args.threads} threads "
          f"(torch {torch.__version__}, {platform.machine()})")
    print("| preset | parameters | model file (fp16) | particle extent | CPU s / micrograph | wall s / micrograph | x lite |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['parameters']:,} | {r['file_MB']} MB | {r['extent_px']:g} px | "
              f"{r['cpu_s_per_micrograph']:.2f} | {r['wall_s_per_micrograph']:.2f} | "
              f"{r['cpu_s_per_micrograph'] / base['cpu_s_per_micrograph']:.1f} |")
    if args.json:
        from hydrapicker.atomic import write_text

        write_text(args.json, json.dumps({"argv": sys.argv, "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
                                          "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
