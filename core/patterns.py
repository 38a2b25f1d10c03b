"""Regular expressions that come from users (import forms, uploaded class maps), run safely.

Python's ``re`` backtracks: ``^(a+)+$`` against 27 characters took seconds, doubling per character,
and held the GIL while it did, so one import request froze every other request (issue 13, item 1).
A pattern a user wrote is therefore compiled by RE2 (``google-re2``), whose matching time is linear
in the input, never by ``re``; its pattern length, compiled size and input length are bounded too.
RE2 has no backreferences or look-around: such a pattern is refused as ``invalid_regex``.
"""

from __future__ import annotations

from typing import Any

import re2

from hazardlens.errors import Invalid

#: Longest pattern accepted (the import form's field has the same bound).
MAX_PATTERN = 200
#: Longest text searched; a longer one finds nothing. File names in a zip are far shorter.
MAX_SUBJECT = 4096
#: Memory RE2 may use for one compiled pattern (a pattern that needs more is refused).
MAX_MEM = 1 << 20


def _options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_MEM
    options.log_errors = False
    return options


class UserRegex:
    """A user's pattern compiled by RE2; searched (not anchored) like ``re.Pattern.search``."""

    __slots__ = ("_compiled", "groups", "pattern")

    def __init__(self, pattern: str, what: str = "regex") -> None:
        if len(pattern) > MAX_PATTERN:
            raise Invalid(f"{what} is longer than {MAX_PATTERN} characters", code="invalid_regex")
        try:
            compiled = re2.compile(pattern, _options())
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise Invalid(
                f"{what} is not a valid regular expression for RE2 ({reason}; no backreferences or look-around)",
                code="invalid_regex",
            ) from exc
        self.pattern = pattern
        self.groups: int = int(compiled.groups)
        self._compiled = compiled

    def search(self, text: str) -> tuple[str, tuple[str | None, ...]] | None:
        """``(whole match, groups)`` of the first match in ``text``, or None (also for a text longer
        than :data:`MAX_SUBJECT`)."""
        if len(text) > MAX_SUBJECT:
            return None
        m = self._compiled.search(text)
        if m is None:
            return None
        return str(m.group(0)), tuple(None if g is None else str(g) for g in m.groups())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserRegex) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"UserRegex({self.pattern!r})"


def user_regex(value: object, what: str = "regex") -> UserRegex | None:
    """``value`` compiled as a user's pattern; None for None or a blank string."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{what} must be a string", code="invalid_regex")
    return UserRegex(value, what) if value.strip() else None
