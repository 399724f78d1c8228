"""The one exception type that the command line turns into a one-line error and a non-zero exit."""


class UsageError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it, on one line."""
