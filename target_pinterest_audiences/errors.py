"""The one error type every layer raises for what a user can act on (the bottom layer: it
imports nothing of the project)."""


class TargetError(RuntimeError):
    """An error a user can act on; its message says what, where and what to do."""
