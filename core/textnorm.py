"""One spelling for identifiers people compare by eye: inspection record numbers.

A record number such as 鄂应急检〔2026〕3号 is typed on phones and PCs in different input modes, so
the same record arrives as ``２０２６`` (full-width) or ``2026``; and a zero-width space, a joiner or
a bidirectional control (U+200B, U+200D, U+202E, ...) is invisible on screen yet makes another
string. Either way two records look the same and are different rows, or one record looks like
another (issue 13, item 8). :func:`record_number` folds compatibility forms (NFKC: full-width digits
and letters become ASCII, the ideographic space a space) and refuses the invisible format characters
(Unicode category Cf) outright, since silently dropping them would hide that something was wrong;
a sample's free-text ``inspection_record`` metadata has them dropped instead.
"""

from __future__ import annotations

import unicodedata

from hazardlens.errors import Invalid


def invisible_characters(value: str) -> list[str]:
    """The format characters (zero-width, joiners, bidirectional controls, BOM, soft hyphen) in
    ``value``, as ``U+XXXX`` names."""
    return [f"U+{ord(c):04X}" for c in value if unicodedata.category(c) == "Cf"]


def record_number(
    value: str, *, what: str = "record number", code: str = "invalid_record_no", drop: bool = False
) -> str:
    """``value`` NFKC-normalised and stripped; Invalid (``code``) if it holds invisible characters,
    or with ``drop`` those characters removed (free-text metadata that merely mentions a record)."""
    folded = unicodedata.normalize("NFKC", value).strip()
    if drop:
        return "".join(c for c in folded if unicodedata.category(c) != "Cf").strip()
    hidden = invisible_characters(folded)
    if hidden:
        raise Invalid(
            f"{what} holds invisible characters ({', '.join(dict.fromkeys(hidden))}) that make look-alike "
            "records; send it as it is printed",
            code=code,
        )
    return folded


__all__ = ["invisible_characters", "record_number"]
