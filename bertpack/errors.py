"""User-facing errors: the CLI prints `error: <message>` and exits non-zero, no traceback."""


class BertpackError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code: int = 2


class ParityError(BertpackError):
    """An exported variant broke its tolerance (the artifact is still written, marked failed)."""

    exit_code = 3
