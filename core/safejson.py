"""JSON that comes from users (COCO and Label Studio files inside an uploaded dataset).

``json.loads`` recurses once per nesting level: ``[[[[...`` a few thousand deep (a 20 KB file)
raised ``RecursionError`` out of the COCO reader, an internal error instead of a refusal (found by
the fuzz pass, tests/test_fuzz.py). A user's JSON is bounded in bytes before it is read and refused
with a message when it nests deeper than the parser can follow; no annotation format needs more
than a handful of levels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hazardlens.errors import Invalid, NotFound, TooLarge

#: Largest annotation file read into memory (COCO's instances_train2017.json, 118k images, is 448 MB).
MAX_JSON_BYTES = 512 * 1024 * 1024


def load_user_json(text: str | bytes, what: str) -> Any:
    """Parse a user's JSON; anything unreadable or pathological is an :class:`Invalid` naming ``what``."""
    try:
        return json.loads(text)
    except RecursionError as e:
        raise Invalid(f"{what}: JSON nested too deeply to read") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Invalid(f"{what}: not a readable JSON file ({e})") from e


def load_user_json_file(path: Path, what: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """:func:`load_user_json` of a file, refused unread when it is over ``max_bytes`` (a BOM is allowed)."""
    what = what or str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(f"{what} is {size:,} bytes; at most {max_bytes:,} are read", code="file_too_large")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise NotFound(f"{what}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise Invalid(f"{what}: not a readable JSON file ({e})") from e
    return load_user_json(text, what)


__all__ = ["MAX_JSON_BYTES", "load_user_json", "load_user_json_file"]
