"""The one exception type for problems a user can fix (bad file, bad setting, missing device...).

The CLI prints its message as one sentence and exits non-zero; anything else is a bug and keeps its traceback.
"""


class KkomaError(Exception):
    """A user-facing error; ``str(e)`` is one clear sentence."""

    exit_code = 1
