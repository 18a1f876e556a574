"""Fixtures of the SDK suite; the harness they hand out is tests/sdk/harness.py.

- ``stack`` (once per session): ``gateway sim`` and a gateway in front of it, as real programs.
- ``errors`` (once per session): the SDK × error table; with ``SDK_ERROR_TABLE=path`` it is written
  there as Markdown at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Stack, Table


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("sdk"))
    yield running
    running.close()


@pytest.fixture(scope="session")
def errors() -> Iterator[Table]:
    table = Table()
    yield table
    target = os.environ.get("SDK_ERROR_TABLE")
    if target:
        Path(target).write_text(table.markdown())

