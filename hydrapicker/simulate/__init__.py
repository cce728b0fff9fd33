"""Micrograph simulator: random pseudo-atomic particles, CTF, ice, carbon, contamination and noise.

    from hydrapicker.simulate import (DatasetSpec, random_dataset_spec, source_dataset_specs,
                                      target_dataset_specs, simulate_micrograph, write_dataset)
    spec = random_dataset_spec(seed=3)            # one particle type + imaging settings
    mic = simulate_micrograph(spec, index=0)      # .image (ny, nx) float32, .xy (N, 2) true centres
    write_dataset(spec, "out/sim3", n_micrographs=10)

Particles are dark on a lighter background (underfocus, protein denser than ice), like real micrographs.
"""
from .datasets import (DatasetSpec, get_target, random_dataset_spec, source_dataset_specs,  # noqa: F401
                       target_dataset_specs, write_dataset)
from .micrograph import SimMicrograph, particle_model, simulate_micrograph  # noqa: F401
from .particles import TARGET_FAMILIES, TRAIN_FAMILIES  # noqa: F401
