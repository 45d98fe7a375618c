"""User-facing errors: one line, exit code 2, no traceback (see main.py)."""


class UserError(Exception):
    """A problem with the user's input (path, option, file), reported as one line."""
