"""The one error type users see: a short message naming the problem and the file or key."""


class TokenforgeError(Exception):
    """Bad input or an impossible request. The CLI prints it as one line and exits with status 2."""
