"""Request hygiene: what is refused before routing, and which headers cross the gateway.

Owns the contract's refusals (absolute- and authority-form targets, CONNECT, dot segments raw or
percent-encoded, encoded slashes, empty segments, a '#' anywhere, Content-Length together with
Transfer-Encoding, control characters in header values) and the header filters in both
directions (hop-by-hop headers and those named by ``Connection`` dropped, ``Host`` left for the
client to set from the upstream URL, ``set_headers`` injected, ``x-request-id`` carried).

Also the framing rules the proxy port applies as a request is parsed (``gateway.server`` calls
them): ``screen_framing`` refuses a transfer coding other than ``chunked`` alone, and applies
``server.headers_with_underscores`` to header names with ``_``, look-alikes of ``Content-Length``,
``Transfer-Encoding``, ``Host`` and ``Connection`` (``Transfer_Encoding``, ``content_length``, or a
name that case-folds to one) never being forwarded.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from . import memo
from .errors import BadRequest

__all__ = [
    "FRAMING_HEADERS",
    "HOP_BY_HOP",
    "check_request",
    "lookalike",
    "request_headers",
    "response_headers",
    "screen_framing",
]

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection"}
)
# Headers the gateway sets or consumes itself and never copies from the client.
_NOT_FORWARDED = frozenset({"host", "content-length", "expect", "x-gateway-timeout-ms"})
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DOT_SEGMENTS = frozenset({".", ".."})
_ENCODED_DOT = re.compile(r"%2e", re.IGNORECASE)
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)


def check_request(method: str, raw_target: str, headers: CIMultiDictProxy[str]) -> str:
    """Refuse what the contract refuses; return the raw path (the target without its query).

    Raises BadRequest with a message saying what was refused. Nothing is forwarded after it.
    """
    if method == "CONNECT":
        raise BadRequest("CONNECT is not supported: the gateway is not an open proxy")
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        raise BadRequest("only origin-form request targets ('/path?query') are accepted")
    if "#" in raw_target:  # a fragment is never sent to a server; forwarded, the query would lose its tail
        raise BadRequest("the request target contains '#'")
    path, _, _ = raw_target.partition("?")
    if len(path) <= memo.LONGEST:
        _checked_path(path)
    else:
        _check_path(path)
    if "content-length" in headers and "transfer-encoding" in headers:
        raise BadRequest("the request has both Content-Length and Transfer-Encoding")
    if len(headers.getall("content-length", ())) > 1:
        raise BadRequest("the request has more than one Content-Length")
    # All names, then all values, searched at once; tab is allowed, so it joins them neutrally.
    if _BAD_VALUE.search("\t".join(headers.values())) or _BAD_VALUE.search("\t".join(headers.keys())):
        raise BadRequest("a request header contains a control character")
    return path


def _check_path(path: str) -> None:
    """Raise BadRequest for a path the contract refuses (a backslash, an encoded separator, an
    empty or dot segment)."""
    if "\\" in path:
        raise BadRequest("the request path contains '\\'")
    if _ENCODED_SEPARATOR.search(path):
        raise BadRequest("the request path contains an encoded '/' or '\\'")
    segments = path.split("/")
    for index, segment in enumerate(segments[1:], start=1):
        if not segment and index != len(segments) - 1:
            raise BadRequest("the request path contains an empty segment ('//')")
        if segment in _DOT_SEGMENTS or ("%" in segment and _ENCODED_DOT.sub(".", segment) in _DOT_SEGMENTS):
            raise BadRequest("the request path contains a dot segment ('.' or '..')")


_checked_path = memo.remembered(_check_path)  # a path's verdict depends on the path alone (gateway.memo)


FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


def lookalike(name: str) -> str | None:
    """The framing header ``name`` is not but reads as, to a stack that turns '_' into '-' (CGI,
    WSGI, PHP) or folds case beyond ASCII (``Hoſt``, ``Connectıon``); None for any other name."""
    lower = name.lower()
    if lower in FRAMING_HEADERS or (name.isascii() and "_" not in name):
        return None
    folded = unicodedata.normalize("NFKC", name)
    for form in (lower, folded.casefold(), folded.upper().lower()):
        if form.replace("_", "-") in FRAMING_HEADERS:
            return form.replace("_", "-")
    return None


def screen_framing(headers: CIMultiDictProxy[str], underscores: str) -> CIMultiDictProxy[str] | None:
    """The framing rules for a request just parsed: None when its headers stand as they are, or the
    headers to use instead (``underscores == "drop"``: without names holding '_' or look-alikes).

    Raises BadRequest for a transfer coding other than ``chunked`` alone (``gzip, chunked`` would
    reach the upstream as a body of unannounced gzip bytes), for a look-alike of a framing header
    unless ``underscores`` is drop, and for any name holding '_' when it is reject."""
    for value in headers.getall("transfer-encoding", ()):
        if value.strip(" \t").lower() != "chunked":
            raise BadRequest("only 'Transfer-Encoding: chunked' is accepted")
    names = "".join(headers.keys())  # every name ASCII and without '_' (the usual case), checked at once
    if names.isascii() and "_" not in names:
        return None
    if underscores == "drop":
        kept: CIMultiDict[str] = CIMultiDict(
            (name, value) for name, value in headers.items() if "_" not in name and lookalike(name) is None
        )
        return CIMultiDictProxy(kept) if len(kept) != len(headers) else None
    for name in headers:  # the name is not echoed: only what it imitates
        target = lookalike(name)
        if target is not None:
            raise BadRequest(f"a header name reads as {target!r} once '_' is '-' or its case is folded")
        if underscores == "reject" and "_" in name:
            raise BadRequest("a header name holds '_' (server.headers_with_underscores: reject)")
    return None


_NONE: frozenset[str] = frozenset()


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """The header names listed in ``Connection`` (hop-by-hop by declaration), lower-cased."""
    named: set[str] = set()
    for value in headers.getall("connection", ()):
        named.update(token.strip().lower() for token in value.split(","))
    return named


def request_headers(
    incoming: CIMultiDictProxy[str],
    request_id: str,
    set_headers: Mapping[str, str],
) -> CIMultiDict[str]:
    """The headers sent upstream: the client's, less hop-by-hop, plus the gateway's own."""
    dropped = _connection_named(incoming) if "connection" in incoming else _NONE
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _NOT_FORWARDED or lower in dropped or lower.startswith("proxy-"):
            continue
        if lower in set_headers:
            continue
        out.add(name, value)
    out["x-request-id"] = request_id
    for name, value in set_headers.items():
        out[name] = value
    return out


def response_headers(incoming: CIMultiDictProxy[str], into: CIMultiDict[str] | None = None) -> CIMultiDict[str]:
    """The upstream's response headers the client receives: less hop-by-hop; added to ``into``
    (an answer's own, still empty, headers: one copy fewer) or to a new multidict."""
    dropped = _connection_named(incoming) if "connection" in incoming else _NONE
    out: CIMultiDict[str] = CIMultiDict() if into is None else into
    for name, value in incoming.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in dropped or lower.startswith("proxy-"):
            continue
        out.add(name, value)
    return out
