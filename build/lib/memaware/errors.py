"""Errors that memaware raises for bad input; the CLI turns them into a one-line message and exit 2."""


class MemawareError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class DataError(MemawareError):
    """A data file is missing, corrupt or does not hold what it should."""


class ConfigError(MemawareError):
    """An option, benchmark, method or model does not fit the run asked for."""
