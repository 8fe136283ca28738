"""The two ways a run ends early that the CLI turns into an exit code: a :class:`RunError`
(one line, exit 2) and an :class:`Interrupted` run (exit 128 + signal number)."""

from __future__ import annotations

__all__ = ["Interrupted", "RunError"]


class RunError(RuntimeError):
    """A run that cannot start or continue for a reason the user can fix."""


class Interrupted(RuntimeError):
    """A run stopped by SIGINT or SIGTERM between two steps, after writing a checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
