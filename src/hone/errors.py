"""Errors whose message is meant for the user: the CLI prints them in one line, no traceback."""


class HoneError(Exception):
    """Base of every error hone raises on purpose; the message says what is wrong and the fix."""


class CheckpointError(HoneError, ValueError):
    """A checkpoint folder or file that cannot be read, or does not fit the model."""


class SquadFormatError(HoneError, ValueError):
    """A SQuAD data or predictions file that does not have the expected shape."""
