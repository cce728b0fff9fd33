"""Errors whose message is meant for the user: it names the file and says how to fix it."""


class UserFacingError(Exception):
    """An error caused by the user's input; printed without a traceback."""


class MicrographError(UserFacingError):
    """A single micrograph cannot be used (missing, corrupt, wrong shape, NaNs...)."""


class StarFileError(UserFacingError):
    """A STAR file is missing, empty or lacks a required column."""


class PixelSizeError(MicrographError):
    """No trustworthy pixel size (none, 0, or the 1.0 that writers put when they do not know): guessing
    would pick every micrograph at the wrong scale, so the whole run stops instead of skipping one."""
