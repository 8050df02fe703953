"""Errors whose message is meant for the user: the CLI prints them in one line, no traceback.

Every error hone raises on purpose is a HoneError (modules define narrower subclasses where a
caller may want to catch one kind); its message names the file, field or flag at fault and
the fix. Anything else reaching the CLI is a bug and keeps its traceback.
"""


class HoneError(Exception):
    """Base of every error hone raises on purpose; the message says what is wrong and the fix."""


class CheckpointError(HoneError, ValueError):
    """A checkpoint folder or file that cannot be read, or does not fit the model."""


class SquadFormatError(HoneError, ValueError):
    """A SQuAD data or predictions file that does not have the expected shape."""


class ModelConfigError(HoneError, ValueError):
    """A model config (or an input shape) that hone's model code cannot handle."""


class RunInterrupted(HoneError):
    """The user stopped a run (Ctrl-C); the message names the last checkpoint to resume from."""
