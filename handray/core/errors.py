"""Errors a user can act on: the message names the thing that is wrong and what to do."""


class HandrayError(Exception):
    """Base class for problems the user can fix; the CLI prints these without a traceback."""


class ConfigError(HandrayError):
    """A configuration value, key or file is wrong."""


class DatasetError(HandrayError):
    """A dataset folder, annotation file or image is missing, corrupt or inconsistent."""
