"""Errors that speak to a user. The command line maps them to exit code 2 (bad usage, config or input)."""


class UserInputError(ValueError):
    """Bad input from a user (a file, a config key, an argument): the message says what, where and what to do."""
