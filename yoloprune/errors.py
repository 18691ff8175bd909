"""User-facing errors: one line saying what is wrong and what to do, shown by the CLI without a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(ValueError):
    """Bad input from the user (file, value, name); the message is a complete one-line explanation."""


def check_whole(name: str, value, low: int, example: str = "") -> int:
    """Validate a whole number >= `low` (bools refused); `example` is appended as ` (e.g. ...)`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} {value!r} must be a whole number >= {low}" + (f" (e.g. {example})" if example else ""))
    return value


def close_match(word: str, choices: Iterable[str]) -> str:
    """Return ` (did you mean 'x'?)` for the closest choice, or an empty string."""
    m = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{m[0]}'?)" if m else ""
