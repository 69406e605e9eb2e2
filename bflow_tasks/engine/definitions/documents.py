"""What JSON the service stores: documents and definitions are read back and serialised
again, so a value that cannot make that round trip is refused when it comes in."""

from __future__ import annotations

import math
from typing import Any

# MariaDB keeps JSON in a LONGTEXT with a json_valid() CHECK, which refuses a value nested
# more than 31 levels (SQLite takes far more): the strictest backend sets the limit. Far
# deeper than any ERP document or workflow condition.
MAX_STORED_DEPTH = 31
# A document is also stored one level down, as the `data` of an action's or resubmit's command.
MAX_DEPTH = MAX_STORED_DEPTH - 1


def json_problem(value: Any, *, max_depth: int = MAX_DEPTH) -> str | None:
    """Why `value` cannot be stored (nested too deep, a NaN or infinite number, a string
    that is not Unicode), or None."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:  # a loop, not recursion: the depth is what is being checked
        item, depth = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "numbers must be finite (NaN and Infinity are not JSON)"
        if isinstance(item, str) and not _is_unicode(item):
            return "strings must be valid Unicode (a lone surrogate such as \\ud800 is not)"
        if isinstance(item, dict | list):
            if depth > max_depth:
                return f"nested more than {max_depth} levels deep"
            children = [*item, *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None


def _is_unicode(text: str) -> bool:
    # JSON may escape half of a UTF-16 pair on its own ("\\ud800"); no database stores it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
