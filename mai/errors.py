"""The one error type users see: a message that says what was wrong and how to fix it.

The CLI turns it into a single ``error: ...`` line and a non-zero exit, never a traceback.
"""


class MaiError(Exception):
    """A user-facing error (bad input, bad config, missing file); its message is shown as is."""
