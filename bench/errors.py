"""The one exception type the command line turns into a single line on stderr (exit code 2)."""


class BenchError(Exception):
    """A problem with the user's input or environment, stated in one line that names it."""
