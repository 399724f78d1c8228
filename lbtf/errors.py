"""The one exception type that the command line turns into a one-line error and a non-zero exit."""


class UsageError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it, on one line."""


# What to do when writing a result or checkpoint fails (full disk, unwritable folder).
WRITE_FAILED_HINT = ("free some space or pass a writable --output_dir, then start the same command "
                     "again to resume")
