"""The one error type users see: a short message naming the problem and the file or key, and the one-line form of
another library's exception that such a message (or a warning) quotes. Imports nothing: every module may use it."""


class TokenforgeError(Exception):
    """Bad input or an impossible request. The CLI prints it as one line and exits with status 2."""


def one_line(exc: BaseException, lines: int | None = None) -> str:
    """`exc`'s message on one line, to quote in an error or a warning: its first `lines` lines (all of them when None)
    with every run of whitespace made one space; the exception's type name when it has no message."""
    text = "\n".join(str(exc).strip().splitlines()[:lines])
    return " ".join(text.split()) or type(exc).__name__
