"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class DynloraError(ValueError):
    """Bad user input: the message names the bad value and what would be valid."""
