"""Speed of the border-band / dead-area finder (hydrapicker.regions) on one CPU core.

    python benchmarks/regions_speed.py [--size 4096] [--repeats 7]

Prints wall and CPU milliseconds per micrograph (best and median of the repeats) for a clean
micrograph, one with bands on three edges, and one with bands and a dead block.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hydrapicker import regions  # noqa: E402


def cases(n: int):
    rng = np.random.default_rng(0)
    clean = (rng.normal(100.0, 3.0, (n, n))).astype(np.float32)
    banded = clean.copy()
    d = n // 40
    banded[:d] = 100.0                                             # flat
    banded[:, n - d:] = banded[:, n - d - 1:n - d]                 # smeared edge column
    pattern = rng.normal(100.0, 3.0, 7)
    banded[n - 2 * d:] = np.resize(pattern, n)[None, :] + rng.normal(0, 0.1, (2 * d, n))  # striped
    dead = banded.copy()
    dead[n // 3:n // 3 + n // 10, n // 2:n // 2 + n // 8] = 0.0
    return {"clean": clean, "bands": banded, "bands+dead": dead}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"find_regions on {args.size}x{args.size} float32, one core, {args.repeats} repeats")
    for name, img in cases(args.size).items():
        regions.find_regions(img)  # warm-up
        wall, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            r = regions.find_regions(img)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(f"  {name:11s} wall best {1e3 * min(wall):6.1f} ms  median {1e3 * np.median(wall):6.1f} ms | "
              f"cpu best {1e3 * min(cpu):6.1f} ms  median {1e3 * np.median(cpu):6.1f} ms | {r.describe()}")


if __name__ == "__main__":
    main()
