"""User-facing errors: caught at the CLI boundary and printed as one line (no traceback)."""

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input or configuration: the message names the file/key, the bad value and the fix."""


class ConfigError(UserError):
    """A `params.yaml` value is missing, unknown, of the wrong type or out of range."""


class DataError(UserError):
    """A raw or processed data file is malformed; the message names file, line and expectation."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a stage; `epoch` (1-based) is the epoch it stopped in, if any."""

    def __init__(self, signum: int, epoch: int | None = None):
        super().__init__(signum, epoch)
        self.signum, self.epoch = signum, epoch


def cli_exit_code(run: Callable[[], object]) -> int:
    """Run a command-line action: 0 on success; a user error becomes one line on stderr and
    exit status 2 (bugs keep their traceback)."""
    try:
        run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
