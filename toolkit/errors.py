"""The one exception type the CLI turns into `exit 2` plus a single line on stderr."""


class LexprobeError(Exception):
    """Bad input or an environment problem the user can fix.

    The message names the problem and the fix, on one line; the CLI prints it without a traceback.
    """
