"""Units of gateway.yaml: durations, sizes, rates and percentages.

Owns parsing the human forms (``250ms``, ``1MiB``, ``80/s``, ``50%``) into plain numbers
(seconds, bytes, tokens per second, fractions) and formatting them back for display. Every
parser raises ``ValueError`` with a message of the form ``expected …, got …``; the config
loader turns it into a message that names the file and the key.

Digits are ASCII digits. Durations are kept to the millisecond and sizes to the byte, and every
``format_*`` is exact: ``parse_x(format_x(v)) == v`` for every ``v`` that ``parse_x`` returns, so
the configuration ``gateway check`` prints reads back as the same configuration.
"""

from __future__ import annotations

import math
import re
import reprlib
from decimal import Decimal, localcontext

__all__ = [
    "MAX_DURATION",
    "MAX_SIZE",
    "format_duration",
    "format_percent",
    "format_rate",
    "format_size",
    "parse_duration",
    "parse_percent",
    "parse_rate",
    "parse_size",
    "shown",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
MAX_DURATION = 1_000_000 * 3600.0  # seconds: '1000000h', over a century
MAX_SIZE = 1024**5  # bytes: '1048576GiB'
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?", re.ASCII)
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
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(s|m|h)", re.ASCII)
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%?", re.ASCII)

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 4, 6, 6, 6, 6


def shown(value: object) -> str:
    """``repr(value)`` for a message, shortened: a long string, a deep list or a huge number is cut."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int too long to convert to text (over 4300 digits)
        if isinstance(value, int):
            return f"<a number of about {int(value.bit_length() * 0.30103) + 1} digits>"
        return f"<{type(value).__name__}>"


def _plain(number: float) -> str:
    """The shortest text that reads back as ``number``, without an exponent: 1e-05 -> '0.00001'."""
    return format(Decimal(repr(number)), "f")


def parse_duration(value: object) -> float:
    """Return seconds for ``'250ms'``, ``'3s'``, ``'5m'``, ``'1h'`` or compounds like ``'1m30s'``.

    Raises ValueError for anything else, bare numbers included (a unit is required). Rounded to
    the millisecond, so that ``'0.3s'`` and ``'300ms'`` are the same number.
    """
    if isinstance(value, str):
        text = value.strip()
        pos, total_ms = 0, 0.0
        for part in _DURATION_PART.finditer(text):
            if part.start() != pos:
                break
            total_ms += float(part.group(1)) * _DURATION_MS[part.group(2)]
            pos = part.end()
        else:
            if pos == len(text) and pos > 0:
                if total_ms <= MAX_DURATION * 1000:
                    return round(total_ms) / 1000
                raise ValueError(f"expected a duration of at most 1000000h, got {shown(value)}")
    raise ValueError(f"expected a duration like '10s', got {shown(value)}")


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
    """Return bytes for ``'64MiB'``, ``'1KB'``, ``'512B'`` or a whole number of bytes.

    Decimals are exact (``'2.01KB'`` is 2010 bytes, not float's 2009); a fraction of a byte is dropped.
    """
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        size = value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m:
            with localcontext() as ctx:
                ctx.prec = 60
                size = int(Decimal(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size is not None and size > MAX_SIZE:
        raise ValueError(f"expected a size of at most 1048576GiB, got {shown(value)}")
    if size is not None:
        return size
    raise ValueError(f"expected a size like '1MiB' (units B KB MB GB KiB MiB GiB), got {shown(value)}")


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
        if m and 0 < float(m.group(1)) < math.inf:
            return float(m.group(1)) / _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a rate like '80/s' (per s, m or h), got {shown(value)}")


def format_rate(per_second: float) -> str:
    """Format tokens per second back to ``'N/s'``, ``'N/m'`` or ``'N/h'``, whole N when one exists.

    ``parse_rate(format_rate(r))`` gives ``r`` back exactly: 80.0 -> '80/s', 1/60 -> '1/m',
    0.25 -> '15/m', and a rate no whole count fits -> its decimal per second.
    """
    for unit in ("s", "m", "h"):
        count = round(per_second * _DURATION_UNITS[unit])
        if count >= 1 and count / _DURATION_UNITS[unit] == per_second:
            return f"{count}/{unit}"
    return f"{_plain(per_second)}/s"


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
        raise ValueError(f"expected a percentage from 0 to 100 like '50%', got {shown(value)}")
    return number / 100.0


def format_percent(fraction: float) -> str:
    """Format a fraction as ``'50%'``; ``parse_percent(format_percent(f)) == f`` for what it returns."""
    number = fraction * 100
    short = f"{number:g}"
    if "e" not in short and float(short) / 100 == fraction:
        return f"{short}%"
    # fraction * 100 may be an ulp or two off the number it was parsed from: look around it
    up = down = number
    for _ in range(8):
        for candidate in (up, down):
            if float(_plain(candidate)) / 100 == fraction:
                return f"{_plain(candidate)}%"
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
    return f"{_plain(number)}%"
