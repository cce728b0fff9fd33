"""HydraPicker: a multi-head deep-learning particle picker for single-particle cryo-EM.

The core package knows nothing of RELION or CryoSPARC; the adapters in ``relion_hydra`` and
``cryosparc_hydra`` translate their worlds into :class:`hydrapicker.types.Micrograph` and
:class:`hydrapicker.types.Picks`.
"""
__version__ = "0.1.0"

from .types import Micrograph, Picks  # noqa: F401  (light: numpy only)
