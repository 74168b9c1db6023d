"""Errors that reach the user as one line (exit code 2 for bad input, 1 for a failure while running)."""

from __future__ import annotations


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class SpecError(ValueError):
    """Invalid input: names the key path (or file) and the offending value. The CLI exits with 2."""

    def __init__(self, key: str, value: object, reason: str):
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"{key}={_show(value)}: {reason}")


class BackendUnavailable(RuntimeError):
    """A backend that is not built or whose dependencies are missing. The CLI exits with 1."""


class RunFailure(RuntimeError):
    """A failure while running a scenario (a rank died, a wait timed out). The CLI exits with 1."""
