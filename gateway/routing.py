"""Routing: which upstream a request goes to, and which of its routes' policies applies.

Owns the path-pattern language of gateway.yaml (``{name}`` one segment or part of one, named;
``*`` within a segment; ``**`` any rest; literal ``:`` allowed, as in ``{model}:generateContent``)
and the two-level match: upstream by path prefix (on segment boundaries, longest first), then
the first route whose methods and pattern match. Patterns match the raw, still percent-encoded
path, so what a route captures is exactly what the upstream will receive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from . import memo
from .errors import PatternError

__all__ = ["Match", "PathPattern", "PatternError", "Router"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=:@%]*")


def _param_regex(name: str) -> str:
    return f"(?P<{name}>[^/]+?)"


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled path pattern. ``match`` returns the captured parameters or None."""

    source: str
    regex: re.Pattern[str]
    params: tuple[str, ...]

    @classmethod
    def compile(cls, source: str) -> PathPattern:
        """Compile ``source``; raise PatternError naming the first problem."""
        if not source.startswith("/"):
            raise PatternError(f"expected a path pattern starting with '/', got {source!r}")
        parts: list[str] = []
        params: list[str] = []
        segments = source[1:].split("/")
        for index, segment in enumerate(segments):
            if segment == "**":
                if index != len(segments) - 1:
                    raise PatternError(f"'**' must be the last segment, in {source!r}")
                # '/**' also matches the bare parent path.
                if parts:
                    parts[-1:] = [parts[-1] + "(?:/.*)?"]
                else:
                    parts.append("(?:/.*)?")
                continue
            parts.append("/" + cls._compile_segment(segment, source, params))
        regex = "".join(parts) if parts else "/"
        return cls(source, re.compile(regex), tuple(params))

    @staticmethod
    def _compile_segment(segment: str, source: str, params: list[str]) -> str:
        out: list[str] = []
        pos = 0
        while pos < len(segment):
            char = segment[pos]
            if char == "{":
                end = segment.find("}", pos)
                if end < 0:
                    raise PatternError(f"unclosed '{{' in {source!r}")
                name = segment[pos + 1 : end]
                if not _NAME.fullmatch(name):
                    raise PatternError(f"bad parameter name {name!r} in {source!r}")
                if name in params:
                    raise PatternError(f"parameter {{{name}}} appears twice in {source!r}")
                params.append(name)
                out.append(_param_regex(name))
                pos = end + 1
            elif char == "*":
                if segment.startswith("**", pos):
                    raise PatternError(f"'**' must be a whole segment, in {source!r}")
                out.append("[^/]*")
                pos += 1
            elif char == "}":
                raise PatternError(f"unmatched '}}' in {source!r}")
            else:
                literal = re.match(r"[^{}*]+", segment[pos:])
                assert literal is not None
                text = literal.group(0)
                if not _SEGMENT_CHARS.fullmatch(text):
                    raise PatternError(f"character not allowed in a path segment, in {source!r}")
                out.append(re.escape(text))
                pos += len(text)
        return "".join(out)

    def match(self, path: str) -> dict[str, str] | None:
        """Return the named parameters when ``path`` (no query) matches the whole pattern."""
        m = self.regex.fullmatch(path)
        return None if m is None else m.groupdict()

    def fill(self, params: dict[str, str]) -> PathPattern:
        """Return a pattern with the named parameters that ``params`` holds replaced by values.

        Used by ``invalidates:``: ``/rest/v1/{table}`` filled from a write's own parameters.
        Values match literally, whatever characters they hold; parameters absent from
        ``params`` stay wildcards.
        """
        source, regex = self.source, self.regex.pattern
        for name in self.params:
            if name in params:
                source = source.replace("{" + name + "}", params[name])
                regex = regex.replace(_param_regex(name), re.escape(params[name]))
        rest = tuple(name for name in self.params if name not in params)
        return PathPattern(source, re.compile(regex), rest)


T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Match(Generic[T, R]):
    """The outcome of routing: upstream, route (None: the upstream's own policy), parameters."""

    upstream: T
    route: R | None
    params: dict[str, str]
    path: str  # the raw path the upstream receives, prefix removed, query not included


class Router(Generic[T, R]):
    """Upstream by prefix, then the first matching route.

    ``upstreams`` is a sequence of (prefix, upstream, routes), where routes is a sequence of
    (methods, pattern, route); empty methods mean any method, and a route for GET also serves HEAD.
    """

    def __init__(
        self,
        upstreams: Iterable[tuple[str, T, Sequence[tuple[frozenset[str], PathPattern, R]]]],
    ) -> None:
        entries = [(prefix.rstrip("/"), up, tuple(routes)) for prefix, up, routes in upstreams]
        # Longest prefix first, so '/api/graph' wins over '/api'.
        self._entries = sorted(entries, key=lambda e: len(e[0]), reverse=True)
        # A router never changes (a reload builds another): matches are remembered (gateway.memo).
        self._memo = memo.remembered(self._match)

    def match(self, method: str, raw_path: str) -> Match[T, R] | None:
        """Route ``raw_path`` (path only, still percent-encoded). None: no prefix matched.
        The Match may be shared with earlier calls: read it, never change it."""
        if len(raw_path) <= memo.LONGEST:
            return self._memo(method, raw_path)
        return self._match(method, raw_path)

    def _match(self, method: str, raw_path: str) -> Match[T, R] | None:
        for prefix, upstream, routes in self._entries:
            if raw_path == prefix:
                rest = "/"
            elif raw_path.startswith(prefix + "/"):
                rest = raw_path[len(prefix) :]
            else:
                continue
            for methods, pattern, route in routes:
                if methods and method not in methods and not (method == "HEAD" and "GET" in methods):
                    continue  # a route for GET also serves HEAD
                params = pattern.match(rest)
                if params is not None:
                    return Match(upstream, route, params, rest)
            return Match(upstream, None, {}, rest)
        return None
