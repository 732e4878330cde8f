"""Errors shared across stages."""


class UserError(Exception):
    """A problem the user can fix (bad parameter, occupied port, missing binary, bad data
    file): the CLI prints it as one clear line, without a traceback, and exits 2."""
