"""Units of gateway.yaml: durations, sizes, rates and percentages.

Owns parsing the human forms (``250ms``, ``1MiB``, ``80/s``, ``50%``) into plain numbers
(seconds, bytes, tokens per second, fractions) and formatting them back for display. Every
parser raises ``ValueError`` with a message of the form ``expected …, got …``; the config
loader turns it into a message that names the file and the key.
"""

from __future__ import annotations

import re

__all__ = [
    "format_duration",
    "format_rate",
    "format_size",
    "parse_duration",
    "parse_percent",
    "parse_rate",
    "parse_size",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(s|m|h)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%?")


def parse_duration(value: object) -> float:
    """Return seconds for ``'250ms'``, ``'3s'``, ``'5m'``, ``'1h'`` or compounds like ``'1m30s'``.

    Raises ValueError for anything else, bare numbers included (a unit is required).
    """
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        for part in _DURATION_PART.finditer(text):
            if part.start() != pos:
                break
            total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
            pos = part.end()
        else:
            if pos == len(text) and pos > 0:
                return total
    raise ValueError(f"expected a duration like '10s', got {value!r}")


def format_duration(seconds: float) -> str:
    """Format seconds back to the shortest exact unit form: 0.25 -> '250ms', 300 -> '5m'."""
    ms = round(seconds * 1000)
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def parse_size(value: object) -> int:
    """Return bytes for ``'64MiB'``, ``'1KB'``, ``'512B'`` or a whole number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"expected a size like '1MiB' (units B KB MB GB KiB MiB GiB), got {value!r}")


def format_size(size: int) -> str:
    """Format bytes with the largest binary unit that divides them exactly."""
    for unit in ("GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_rate(value: object) -> float:
    """Return tokens per second for ``'80/s'``, ``'600/m'`` or ``'1000/h'``."""
    if isinstance(value, str):
        m = _RATE.fullmatch(value.strip())
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) / _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a rate like '80/s' (per s, m or h), got {value!r}")


def format_rate(per_second: float) -> str:
    """Format tokens per second back to ``'N/s'``, ``'N/m'`` or ``'N/h'``, whole N when one exists.

    ``parse_rate(format_rate(r))`` gives ``r`` back: 80.0 -> '80/s', 1/60 -> '1/m'.
    """
    for unit in ("s", "m", "h"):
        count = per_second * _DURATION_UNITS[unit]
        if count >= 1 and abs(count - round(count)) <= 1e-9 * count:
            return f"{round(count)}/{unit}"
    return f"{per_second!r}/s" if "e" not in repr(per_second) else f"{per_second * 3600:f}/h"


def parse_percent(value: object) -> float:
    """Return a fraction in [0, 1] for ``'50%'``, ``50`` or ``12.5``."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        m = _PERCENT.fullmatch(value.strip())
        if m:
            number = float(m.group(1))
    if number is None or not 0 <= number <= 100:
        raise ValueError(f"expected a percentage from 0 to 100 like '50%', got {value!r}")
    return number / 100.0
