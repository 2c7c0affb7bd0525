"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class BermoPruneError(Exception):
    """A mistake in what the user asked for (bad path, bad option, malformed file).

    Raised by library code wherever the cause is the user's input, so the CLI can
    report it in one line instead of a traceback.
    """

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its type when it has none), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
