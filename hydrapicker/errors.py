"""Errors whose message is meant for the user: it names the file and says how to fix it."""


class UserFacingError(Exception):
    """An error caused by the user's input; printed without a traceback."""


class MicrographError(UserFacingError):
    """A single micrograph cannot be used (missing, corrupt, wrong shape, NaNs...)."""


class StarFileError(UserFacingError):
    """A STAR file is missing, empty or lacks a required column."""
