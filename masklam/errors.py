"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UsageError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""
