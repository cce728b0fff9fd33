"""Import cryosparc-tools lazily; a missing extra becomes a one-line install hint."""
from __future__ import annotations

import importlib

from hydrapicker.errors import UserFacingError

INSTALL_HINT = 'pip install "hydrapicker[cryosparc]"'


class MissingExtraError(UserFacingError):
    """cryosparc-tools is not installed."""


def require(module: str = "cryosparc.tools"):
    """Import and return ``module`` from cryosparc-tools, or raise a :class:`MissingExtraError`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and not exc.name.split(".")[0] == "cryosparc":
            raise  # a dependency of cryosparc-tools is broken: show the real error
        raise MissingExtraError(
            f"cryosparc-tools is not installed (needed for the CryoSPARC adapter); "
            f"install it with: {INSTALL_HINT}") from None


def dataset_class():
    """``cryosparc.dataset.Dataset`` (offline-capable; no server needed)."""
    return require("cryosparc.dataset").Dataset
