"""Errors that stop the service from starting.

Each carries the one line an operator needs; the command line prints it as
``ess: cannot start: <line>`` and exits 1, with no traceback.
"""


class StartupError(Exception):
    """A problem found at start-up that makes running pointless."""
