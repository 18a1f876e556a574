"""Units of gateway.yaml: durations, sizes, rates and percentages, parsed and formatted back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.units import (
    format_duration,
    format_rate,
    format_size,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("3s", 3.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        ("0s", 0.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["10", 10, 10.0, "ten", "-1s", "", "s", "10 s", "10S", "1s ms", "1m30", "5d", None, True, "1.s"]
)
def test_parse_duration_refuses(value):
    with pytest.raises(ValueError, match=r"^expected a duration like '10s', got ") as info:
        parse_duration(value)
    assert str(info.value).endswith(repr(value))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (3.0, "3s"), (300.0, "5m"), (3600.0, "1h"), (90.0, "90s"), (0.0, "0s"), (1.5, "1500ms")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10 * 24 * 3600 * 1000))
def test_duration_round_trip(ms):
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1MiB", 1024**2),
        ("64MiB", 64 * 1024**2),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("2GB", 2 * 1000**3),
        ("1GiB", 1024**3),
        ("512B", 512),
        ("512", 512),
        ("1.5KiB", 1536),
        ("10 MiB", 10 * 1024**2),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["1TB", "1mb", "lots", "", "-1KB", -1, 1.5, True, None, "1 MiB x"])
def test_parse_size_refuses(value):
    with pytest.raises(ValueError, match=r"^expected a size like '1MiB' \(units B KB MB GB KiB MiB GiB\), got "):
        parse_size(value)


@pytest.mark.parametrize(
    ("size", "text"), [(1024**2, "1MiB"), (64 * 1024**2, "64MiB"), (1536, "1536B"), (1000, "1000B"), (0, "0B")]
)
def test_format_size(size, text):
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=1 << 40))
def test_size_round_trip(size):
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("80/s", 80.0), ("600/m", 10.0), ("3600/h", 1.0), ("1/m", 1 / 60), ("2.5/s", 2.5), ("80 / s", 80.0)],
)
def test_parse_rate(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("value", ["80", "80/d", "0/s", "-1/s", "/s", 80, "80/sec", "", None])
def test_parse_rate_refuses(value):
    with pytest.raises(ValueError, match=r"^expected a rate like '80/s' \(per s, m or h\), got "):
        parse_rate(value)


@pytest.mark.parametrize(
    ("per_second", "text"),
    [(80.0, "80/s"), (10.0, "10/s"), (1 / 60, "1/m"), (1 / 3600, "1/h"), (2.5, "150/m"), (7 / 3600, "7/h")],
)
def test_format_rate(per_second, text):
    assert format_rate(per_second) == text


@given(st.integers(min_value=1, max_value=1_000_000), st.sampled_from(["s", "m", "h"]))
def test_rate_round_trip(count, unit):
    per_second = parse_rate(f"{count}/{unit}")
    assert parse_rate(format_rate(per_second)) == pytest.approx(per_second, rel=1e-12)


@given(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_rate_round_trip_of_any_float(per_second):
    assert parse_rate(format_rate(per_second)) == pytest.approx(per_second, rel=1e-6)


@pytest.mark.parametrize(
    ("value", "fraction"),
    [("50%", 0.5), ("12.5%", 0.125), (20, 0.2), (0, 0.0), ("100%", 1.0), (12.5, 0.125), ("7", 0.07)],
)
def test_parse_percent(value, fraction):
    assert parse_percent(value) == pytest.approx(fraction)


@pytest.mark.parametrize("value", ["101%", -1, 100.5, "half", "", True, None, "5%%"])
def test_parse_percent_refuses(value):
    with pytest.raises(ValueError, match=r"^expected a percentage from 0 to 100 like '50%', got "):
        parse_percent(value)
