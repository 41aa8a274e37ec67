"""One exception type for problems a user must fix (config, inputs, paths).

Workflow scripts catch :class:`UserError` and print its message alone, without a
traceback, so that a bad config or input reads as one clear sentence.
"""


class UserError(Exception):
    """A problem with the user's config or inputs, with a message saying how to fix it."""
