"""Errors a user fixes in their config; the CLI prints them as one line instead of a traceback."""


class ConfigError(ValueError):
    """A configuration that cannot work, with what to change."""
