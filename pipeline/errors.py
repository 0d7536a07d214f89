"""User-facing errors: caught at the CLI boundary and printed as one line (no traceback)."""


class UserError(Exception):
    """Bad input or configuration: the message names the file/key, the bad value and the fix."""


class ConfigError(UserError):
    """A `params.yaml` value is missing, unknown, of the wrong type or out of range."""


class DataError(UserError):
    """A raw or processed data file is malformed; the message names file, line and expectation."""
