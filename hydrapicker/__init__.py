"""HydraPicker: a multi-head deep-learning particle picker for single-particle cryo-EM.

The core package knows nothing of RELION or CryoSPARC; the adapters in ``relion_hydra`` and
``cryosparc_hydra`` translate their worlds into :class:`hydrapicker.types.Micrograph` and
:class:`hydrapicker.types.Picks`.
"""
try:  # the version is pyproject.toml's, read from the installed metadata
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("hydrapicker")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

from .types import Micrograph, Picks  # noqa: F401  (light: numpy only)
