"""The one exception type that the command line turns into a clean message."""


class HarrisonError(Exception):
    """A problem the user can fix: the message names the file, the record and what to do.

    The command line prints it without a traceback and exits with status 2.
    """
