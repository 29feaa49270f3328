"""The exception types for bad user input; the CLIs turn them into a one-line message and exit code 2."""


class PirlInputError(Exception):
    """Bad input from the user: the message names the file and the problem."""


class PirlWriteError(PirlInputError):
    """A file could not be written completely (a full disk, no permission): names the target and the cause.

    A PirlInputError, so every CLI reports it the same way (one line, exit code 2); nothing was left under
    the target's name."""
