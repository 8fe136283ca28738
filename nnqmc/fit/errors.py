"""The one exception of the fit: bad input the user can fix (the CLI prints it on one line,
exit code 2)."""

from __future__ import annotations


class FitError(ValueError):
    """A training set, option or model file that cannot be used."""
