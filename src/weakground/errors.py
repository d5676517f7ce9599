"""User-facing errors.

Anything a user can cause (a bad file, an unknown label, a config typo) raises :class:`WeakgroundError` with
one line that names the file or setting and the problem. The CLI prints that line and exits non-zero instead
of showing a traceback; programming errors still surface as ordinary exceptions.
"""


class WeakgroundError(Exception):
    """An error caused by input the user controls; its message is shown as-is, on one line."""


class ConfigError(WeakgroundError):
    """A config file or override is malformed, has a missing or an unknown key, or a wrong type."""


class CheckpointError(WeakgroundError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


class InputError(WeakgroundError):
    """An image, label or phrase given at run time cannot be used (wrong size, channels, unknown label)."""
