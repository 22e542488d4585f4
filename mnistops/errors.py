"""The one exception a user can cause. The entrypoint prints its message as a single line and
exits non-zero; anything else is a bug and keeps its traceback."""


class MnistopsError(Exception):
    """A problem the user can fix: bad config value, unreachable mirror, corrupt file, missing model."""


class Held(MnistopsError):
    """Neither pass nor fail: not enough evidence yet (stage=canary's hold). Exit 3, so a pipeline can
    tell "try again later" from a failure (2)."""

    exit_code = 3
