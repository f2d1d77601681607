"""User-facing errors: each message names the file, the problem and the fix.

Library code raises these; only ``cli.main`` turns them into one red line and an exit code.
Anything else that escapes is a bug and keeps its traceback.
"""


class MgfrError(Exception):
    """An error the user can act on: bad input, bad config or missing weights."""


class InputError(MgfrError):
    """An input file (photo, reference, dataset image) cannot be used."""


class ConfigError(MgfrError):
    """A YAML file, model config or option value is invalid."""


class WeightsError(MgfrError):
    """A weight file is missing, corrupt or does not match its config."""


class OutputError(MgfrError):
    """The output folder cannot take files (read-only, no permission, disk full): the run stops."""


class UsageError(ConfigError):
    """The command line asks for something that cannot be done (exit code 2), e.g. outputs onto the inputs."""
