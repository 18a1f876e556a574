"""Which simulated route a request is: the hosts, their routes, and the path rules of each API.

Owns ``UPSTREAMS`` (the simulated hosts), ``ROUTES`` (the routes a scenario may name under
``upstreams.<name>.routes``; any other request is route ``OTHER``: an API-shaped 404, never
faulted) and ``route``, which reads a method and path as the real API would: Graph's
``/{ver}/{phone_id}/messages|media|whatsapp_business_profile`` and ``/{ver}/{media_id}``,
lookaside's ``/whatsapp_business/attachments/``, Gemini's ``/{ver}/models/{model}:{verb}`` and
``/{ver}/models[/{model}]``, and Supabase's ``/rest/v1``, ``/auth/v1`` and ``/storage/v1`` paths.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["OTHER", "ROUTES", "UPSTREAMS", "route"]

UPSTREAMS = ("graph", "gemini", "supabase", "lookaside")
# The routes a scenario may name under ``upstreams.<name>.routes``; anything else is route "other"
# (an API-shaped 404, never faulted).
ROUTES: dict[str, tuple[str, ...]] = {
    "graph": ("send_message", "media_url", "media_upload", "media_delete", "business_profile"),
    "gemini": ("generate", "stream", "models", "count_tokens", "embed"),
    "supabase": (
        "rest_read",
        "rest_write",
        "rpc",
        "auth_user",
        "auth_token",
        "auth_logout",
        "storage_upload",
        "storage_download",
        "storage_list",
        "storage_delete",
        "storage_bucket",
    ),
    "lookaside": ("media",),
}
OTHER = "other"


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/") if path.strip("/") else []


def _route_graph(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = _segments(path)
    if len(parts) == 3:
        params = {"version": parts[0], "phone_id": parts[1]}
        if method == "POST" and parts[2] == "messages":
            return "send_message", params
        if method == "POST" and parts[2] == "media":
            return "media_upload", params
        if method in ("GET", "POST") and parts[2] == "whatsapp_business_profile":
            return "business_profile", params
    if len(parts) == 2 and method in ("GET", "DELETE"):
        return "media_url" if method == "GET" else "media_delete", {"version": parts[0], "media_id": parts[1]}
    return OTHER, {}


def _route_lookaside(method: str, path: str) -> tuple[str, dict[str, str]]:
    if method in ("GET", "HEAD") and _segments(path) == ["whatsapp_business", "attachments"]:
        return "media", {}
    return OTHER, {}


def _route_gemini(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = _segments(path)
    if len(parts) == 3 and parts[1] == "models" and ":" in parts[2]:
        model, _, verb = parts[2].rpartition(":")
        params = {"version": parts[0], "model": model}
        if method == "POST" and verb == "generateContent":
            return "generate", params
        if method == "POST" and verb == "streamGenerateContent":
            return "stream", params
        if method == "POST" and verb == "countTokens":
            return "count_tokens", params
        if method == "POST" and verb in ("embedContent", "batchEmbedContents"):
            return "embed", {**params, "verb": verb}
        return OTHER, {}
    if method == "GET" and len(parts) in (2, 3) and parts[1] == "models":
        return "models", {"version": parts[0], **({"model": parts[2]} if len(parts) == 3 else {})}
    return OTHER, {}


def _route_supabase(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = _segments(path)
    if len(parts) == 4 and parts[:3] == ["rest", "v1", "rpc"] and method in ("GET", "HEAD", "POST"):
        return "rpc", {"fn": parts[3]}
    if len(parts) == 3 and parts[:2] == ["rest", "v1"]:
        if method in ("GET", "HEAD"):
            return "rest_read", {"table": parts[2]}
        if method in ("POST", "PATCH", "PUT", "DELETE"):
            return "rest_write", {"table": parts[2]}
    if parts[:2] == ["auth", "v1"] and len(parts) == 3:
        route = {("GET", "user"): "auth_user", ("POST", "token"): "auth_token", ("POST", "logout"): "auth_logout"}
        found = route.get((method, parts[2]))
        return (found, {}) if found else (OTHER, {})
    if parts[:2] == ["storage", "v1"]:
        return _route_storage(method, parts[2:])
    return OTHER, {}


def _route_storage(method: str, parts: list[str]) -> tuple[str, dict[str, str]]:
    """Storage's paths, after ``/storage/v1``: bucket, object list, object (by bucket and key)."""
    if parts[:1] == ["bucket"] and len(parts) <= 2 and method in ("GET", "POST"):
        return "storage_bucket", ({"bucket": parts[1]} if len(parts) == 2 else {})
    if parts[:2] == ["object", "list"] and len(parts) == 3 and method == "POST":
        return "storage_list", {"bucket": parts[2]}
    if parts[:1] != ["object"]:
        return OTHER, {}
    if len(parts) == 2 and method == "DELETE":
        return "storage_delete", {"bucket": parts[1]}
    rest = parts[1:]
    if rest[:1] in (["authenticated"], ["public"]) and method in ("GET", "HEAD"):
        rest = rest[1:]
    if len(rest) < 2:
        return OTHER, {}
    params = {"bucket": rest[0], "key": "/".join(rest[1:])}
    if method in ("GET", "HEAD"):
        return "storage_download", params
    if method in ("POST", "PUT"):
        return "storage_upload", params
    return OTHER, {}


ROUTERS: dict[str, Callable[[str, str], tuple[str, dict[str, str]]]] = {
    "graph": _route_graph,
    "lookaside": _route_lookaside,
    "gemini": _route_gemini,
    "supabase": _route_supabase,
}


def route(upstream: str, method: str, path: str) -> tuple[str, dict[str, str]]:
    """The route of a request to ``upstream`` and the parameters its path names (``OTHER`` when none)."""
    return ROUTERS[upstream](method, path)
