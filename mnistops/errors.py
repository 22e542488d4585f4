"""The one exception a user can cause. The entrypoint prints its message as a single line and
exits non-zero; anything else is a bug and keeps its traceback."""


class MnistopsError(Exception):
    """A problem the user can fix: bad config value, unreachable mirror, corrupt file, missing model."""
