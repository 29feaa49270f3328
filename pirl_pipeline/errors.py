"""The one exception type for bad user input; the CLIs turn it into a one-line message and exit code 2."""


class PirlInputError(Exception):
    """Bad input from the user: the message names the file and the problem."""
