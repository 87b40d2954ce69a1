"""User-facing errors: one clear message that names the file or key and what was expected."""
from __future__ import annotations


class StructsegError(Exception):
    """An error caused by user input (a file, a config key, a name), printed without a traceback."""


class ConfigError(StructsegError):
    """A config file or override is invalid (unknown key, wrong type)."""


class DataError(StructsegError):
    """A dataset file is missing, unreadable or inconsistent."""


class CheckpointError(StructsegError):
    """A checkpoint cannot be read or does not match what is asked of it."""


class ImageTooLargeError(DataError):
    """An image's header declares more pixels than allowed (refused before its pixels are decoded)."""
