"""aiohttp's internals: used in one module only, and still there in the installed aiohttp (issue 14).

``gateway/aiohttp_compat.py`` is the one module that touches aiohttp's private names; its
``check()`` verifies each one the gateway uses (``PRIVATE_NAMES``) with the shape it relies on.
When a new aiohttp moves one, ``test_every_private_aiohttp_name_the_gateway_uses_is_there`` fails
naming it: fix ``aiohttp_compat`` before raising the ``aiohttp<3.15`` pin.
"""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict, istr
from yarl import URL

from gateway import aiohttp_compat

PACKAGE = Path(aiohttp_compat.__file__).resolve().parent
COMPAT = Path(aiohttp_compat.__file__).resolve()


async def test_every_private_aiohttp_name_the_gateway_uses_is_there():
    problems = await aiohttp_compat.check()
    assert not problems, "\n".join(problems)


def test_the_check_names_the_attribute_a_new_aiohttp_removed(monkeypatch):
    """As if a release had renamed ``RequestHandler._messages`` and dropped ``TCPConnector._release``."""
    real_init = aiohttp.web_protocol.RequestHandler.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._messages = None

    monkeypatch.setattr(aiohttp.web_protocol.RequestHandler, "__init__", init)
    monkeypatch.delattr(aiohttp.connector.BaseConnector, "_release")
    problems = asyncio.run(aiohttp_compat.check())
    assert any("RequestHandler._messages is not a deque" in p for p in problems), problems
    assert any("TCPConnector._release" in p for p in problems), problems
    assert all(f"aiohttp {aiohttp.__version__}" in p for p in problems)


SKIP_SETS = [
    None,
    (),
    ("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),  # the gateway's sessions (gateway.pool)
    ("Accept",),
    ("user-agent", "content-type"),
]
HEADER_SETS = [
    {},
    {"Accept": "application/json"},
    {"User-Agent": "pywa/2", "Accept-Encoding": "br", "X-Other": "1"},
    {"content-type": "text/plain", "ACCEPT": "text/*"},
]


@pytest.mark.parametrize("skip", SKIP_SETS)
@pytest.mark.parametrize("given", HEADER_SETS)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_request_base_sends_the_headers_aiohttps_own_request_sends(skip, given, method):
    """``RequestBase.update_auto_headers`` (no multidict built per request) ends with the same
    headers, in the same order, and the same skip list as aiohttp's own, with a body or none."""

    def build(cls):
        session_skip = None if skip is None else frozenset(istr(name) for name in skip)
        body = b"x" if method == "POST" else None
        return cls(
            method,
            URL("http://upstream.test/p"),
            headers=CIMultiDict(given),
            skip_auto_headers=session_skip,
            data=body,
            loop=asyncio.get_running_loop(),
        )

    ours, theirs = build(aiohttp_compat.RequestBase), build(aiohttp.ClientRequest)
    assert list(ours.headers.items()) == list(theirs.headers.items())
    assert list(ours.skip_auto_headers) == list(theirs.skip_auto_headers)


def _private_uses(path: Path) -> set[str]:
    """Private aiohttp names a module uses: ``from aiohttp… import _x``, and ``._x`` attributes
    that are not the module's own (names its classes define or assign on ``self``)."""
    tree = ast.parse(path.read_text(), str(path))
    own = {
        t.attr
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Attribute)
    }
    own |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp"):
            found |= {a.name for a in node.names if a.name.startswith("_")}
        elif isinstance(node, ast.Attribute) and re.fullmatch(r"_[a-z][a-z_]*", node.attr) and node.attr not in own:
            found.add(node.attr)
    return found


def test_no_other_module_touches_the_private_names_of_aiohttp():
    """Every private name of ``PRIVATE_NAMES`` is used in aiohttp_compat only; and aiohttp_compat uses
    no private aiohttp name that ``PRIVATE_NAMES`` (which ``check`` verifies) does not list."""
    listed = {p.name for p in aiohttp_compat.PRIVATE_NAMES}
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == COMPAT:
            continue
        used = _private_uses(path) & listed
        if used:
            offenders[str(path.relative_to(PACKAGE.parent))] = sorted(used)
    assert not offenders, f"aiohttp private names outside gateway/aiohttp_compat.py: {offenders}"
    unlisted = _private_uses(COMPAT) - listed - {"_replace"}  # a NamedTuple's public method
    assert not unlisted, f"gateway/aiohttp_compat.py uses private names PRIVATE_NAMES does not list: {sorted(unlisted)}"
