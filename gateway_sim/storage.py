"""The simulated Supabase Storage API, in memory (``gateway sim``).

Owns buckets and objects under ``/storage/v1`` as storage3 (supabase-py) calls them:

- ``POST|PUT /object/{bucket}/{path…}`` upload or update: multipart (``file``, ``cacheControl``,
  ``metadata``) or a raw body; ``x-upsert: true`` replaces, else an existing key is 409 ``Duplicate``.
  Answer ``{"Key": "bucket/path", "Id": uuid}``.
- ``GET|HEAD /object/{bucket}/{path…}`` (also ``/object/authenticated/…`` and ``/object/public/…``):
  the bytes with their Content-Type, ETag, Cache-Control and Last-Modified.
- ``POST /object/list/{bucket}`` with ``{prefix, limit, offset, sortBy: {column, order}, search}``:
  a folder's files and sub-folders (``id: null``), as Storage lists them.
- ``DELETE /object/{bucket}`` with ``{"prefixes": [...]}``: the objects removed.
- ``GET /bucket``, ``GET /bucket/{id}``, ``POST /bucket``: buckets (``media``, ``avatars`` and
  ``documents`` exist from the start).

Errors are Storage's ``{"statusCode": "404", "code": "NoSuchKey", "error": "not_found", "message"}``
(``STORAGE_CODES``; ``storage_error`` renders them, ``ApiFault`` carries them from a handler).
Objects are at most 50 MiB (413 ``EntityTooLarge``); in all at most ``KEEP_BYTES`` are kept, the
oldest written dropped first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .common import ApiFault, json_response, parse_form

__all__ = ["DEFAULT_BUCKETS", "STORAGE_CODES", "Storage", "storage_error"]

MAX_OBJECT_BYTES = 50 * 1024 * 1024  # Supabase's default per-file limit
KEEP_BYTES = 256 * 1024 * 1024
DEFAULT_BUCKETS = ("media", "avatars", "documents")

# Storage's error codes: code -> (HTTP status, short error name, message).
STORAGE_CODES: dict[str, tuple[int, str, str]] = {
    "InvalidRequest": (400, "invalid_request", "The request is not valid"),
    "InvalidJWT": (400, "Invalid JWT", "jwt malformed"),
    "AccessDenied": (403, "Unauthorized", "new row violates row-level security policy"),
    "NoSuchBucket": (404, "Bucket not found", "Bucket not found"),
    "NoSuchKey": (404, "not_found", "Object not found"),
    "Duplicate": (409, "Duplicate", "The resource already exists"),
    "BucketAlreadyExists": (409, "Duplicate", "The resource already exists"),
    "EntityTooLarge": (413, "Payload too large", "The object exceeded the maximum allowed size"),
    "SlowDown": (429, "too_many_requests", "Please reduce your request rate"),
    "InternalError": (500, "Internal", "Internal Server Error"),
    "DatabaseError": (503, "DatabaseError", "Database error: could not connect to the database"),
    "DatabaseTimeout": (544, "DatabaseTimeout", "The connection to the database timed out"),
}
_CODE_BY_STATUS = {
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    409: "Duplicate",
    413: "EntityTooLarge",
    429: "SlowDown",
    503: "DatabaseError",
    544: "DatabaseTimeout",
}


def storage_error(
    status: int | None, code: str | None = None, message: str | None = None, retry_after: float | None = None
) -> web.Response:
    """Storage's error body; the code decides the status unless one is given."""
    if code is None or (code not in STORAGE_CODES and status is None):
        code = _CODE_BY_STATUS.get(status or 500, "InternalError")
    known = STORAGE_CODES.get(code)
    status = status or (known[0] if known else 500)
    name = known[1] if known else code
    body = {"statusCode": str(status), "code": code, "error": name, "message": message or (known or ("", "", code))[2]}
    headers = {} if retry_after is None else {"Retry-After": str(max(0, math.ceil(retry_after)))}
    return json_response(status, body, headers)


def _fault(code: str, message: str | None = None) -> ApiFault:
    return ApiFault("storage", STORAGE_CODES[code][0], code, message)


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class _Object:
    data: bytes
    mime: str
    cache_control: str
    oid: str
    created: float
    updated: float
    user_metadata: dict[str, Any]

    @property
    def etag(self) -> str:
        return '"' + hashlib.md5(self.data, usedforsecurity=False).hexdigest() + '"'

    def entry(self, name: str) -> dict[str, Any]:
        """How ``list`` shows it."""
        return {
            "name": name,
            "id": self.oid,
            "updated_at": _stamp(self.updated),
            "created_at": _stamp(self.created),
            "last_accessed_at": _stamp(self.updated),
            "metadata": {
                "eTag": self.etag,
                "size": len(self.data),
                "mimetype": self.mime,
                "cacheControl": self.cache_control,
                "lastModified": _stamp(self.updated),
                "contentLength": len(self.data),
                "httpStatusCode": 200,
            },
        }


class Storage:
    """Buckets and their objects; ``now`` is the wall clock (timestamps)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        created = now()
        self._buckets: dict[str, dict[str, Any]] = {name: self._bucket(name, created) for name in DEFAULT_BUCKETS}
        self._objects: OrderedDict[tuple[str, str], _Object] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _bucket(name: str, created: float, public: bool = False) -> dict[str, Any]:
        stamp = _stamp(created)
        return {
            "id": name,
            "name": name,
            "owner": "",
            "public": public,
            "file_size_limit": None,
            "allowed_mime_types": None,
            "created_at": stamp,
            "updated_at": stamp,
        }

    # ---- buckets

    def buckets(self, method: str, bucket: str | None, body: bytes) -> web.Response:
        if method == "GET" and bucket is None:
            return json_response(200, list(self._buckets.values()))
        if method == "GET" and bucket is not None:
            if bucket not in self._buckets:
                raise _fault("NoSuchBucket")
            return json_response(200, self._buckets[bucket])
        data = _json(body)
        name = data.get("name") or data.get("id")
        if not isinstance(name, str) or not name or "/" in name:
            raise _fault("InvalidRequest", "body/name must be a bucket name without '/'")
        if name in self._buckets:
            raise _fault("BucketAlreadyExists")
        self._buckets[name] = self._bucket(name, self.now(), bool(data.get("public")))
        return json_response(200, {"name": name})

    # ---- objects

    def upload(self, method: str, bucket: str, key: str, headers: Mapping[str, str], body: bytes) -> web.Response:
        """POST (create; ``x-upsert: true`` replaces) or PUT (replace an existing object)."""
        if bucket not in self._buckets:
            raise _fault("NoSuchBucket")
        if not key or key.endswith("/"):
            raise _fault("InvalidRequest", "The object key must name a file")
        form = parse_form(headers.get("Content-Type", ""), body)
        cache = "3600"
        metadata: dict[str, Any] = {}
        if form is not None:
            file = form.get("file") or next((p for p in form.values() if p.filename is not None), None)
            if file is None:
                raise _fault("InvalidRequest", "The multipart form has no file")
            data, mime = file.data, file.content_type or "application/octet-stream"
            if "cacheControl" in form:
                cache = form["cacheControl"].text
            if "metadata" in form:
                try:
                    parsed = json.loads(form["metadata"].text)
                except ValueError:
                    parsed = None
                metadata = parsed if isinstance(parsed, dict) else {}
        else:
            data, mime = body, headers.get("Content-Type", "application/octet-stream")
            cache = headers.get("cache-control", cache).removeprefix("max-age=")
        if len(data) > MAX_OBJECT_BYTES:
            raise _fault("EntityTooLarge")
        existing = self._objects.get((bucket, key))
        upsert = headers.get("x-upsert", "").lower() == "true"
        if method == "POST" and existing is not None and not upsert:
            raise _fault("Duplicate")
        if method == "PUT" and existing is None:
            raise _fault("NoSuchKey")
        now = self.now()
        oid = existing.oid if existing is not None else str(uuid.uuid4())
        created = existing.created if existing is not None else now
        self._put(bucket, key, _Object(data, mime, f"max-age={cache}", oid, created, now, metadata))
        return json_response(200, {"Key": f"{bucket}/{key}", "Id": oid})

    def _put(self, bucket: str, key: str, obj: _Object) -> None:
        old = self._objects.pop((bucket, key), None)
        if old is not None:
            self._bytes -= len(old.data)
        self._objects[(bucket, key)] = obj
        self._bytes += len(obj.data)
        while self._bytes > KEEP_BYTES and len(self._objects) > 1:
            _, dropped = self._objects.popitem(last=False)
            self._bytes -= len(dropped.data)

    def download(self, method: str, bucket: str, key: str) -> web.Response:
        obj = self._objects.get((bucket, key))
        if obj is None:
            raise _fault("NoSuchBucket" if bucket not in self._buckets else "NoSuchKey")
        headers = {
            "Content-Type": obj.mime,
            "ETag": obj.etag,
            "Cache-Control": obj.cache_control,
            "Last-Modified": dt.datetime.fromtimestamp(obj.updated, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
        }
        if method == "HEAD":
            headers["Content-Length"] = str(len(obj.data))
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=obj.data, headers=headers)

    def list(self, bucket: str, body: bytes) -> web.Response:
        """A folder's content: files, and sub-folders named once with ``id: null``."""
        data = _json(body)
        prefix = str(data.get("prefix") or "").strip("/")
        limit, offset = data.get("limit", 100), data.get("offset", 0)
        if not isinstance(limit, int) or not isinstance(offset, int) or limit < 0 or offset < 0:
            raise _fault("InvalidRequest", "limit and offset must be whole numbers")
        search = str(data.get("search") or "").lower()
        sort_by = data.get("sortBy")
        sort: dict[str, Any] = sort_by if isinstance(sort_by, dict) else {}
        column, order = str(sort.get("column", "name")), str(sort.get("order", "asc")).lower()
        if column not in ("name", "created_at", "updated_at", "last_accessed_at"):
            raise _fault("InvalidRequest", f"sortBy.column must be name, created_at or updated_at, got {column!r}")
        start = f"{prefix}/" if prefix else ""
        folders: dict[str, None] = {}
        files: list[tuple[str, _Object]] = []
        for (b, key), obj in self._objects.items():
            if b != bucket or not key.startswith(start):
                continue
            name, slash, _ = key[len(start) :].partition("/")
            if search and not name.lower().startswith(search):
                continue
            if slash:
                folders[name] = None
            else:
                files.append((name, obj))
        if column == "name":
            files.sort(key=lambda item: item[0])
        else:
            files.sort(key=lambda item: item[1].created if column == "created_at" else item[1].updated)
        entries = [_folder(name) for name in sorted(folders)] + [obj.entry(name) for name, obj in files]
        if order == "desc":
            entries.reverse()
        return json_response(200, entries[offset : offset + limit])

    def delete(self, bucket: str, body: bytes) -> web.Response:
        data = _json(body)
        prefixes = data.get("prefixes")
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise _fault("InvalidRequest", "body/prefixes must be a list of object paths")
        removed = []
        for key in prefixes:
            obj = self._objects.pop((bucket, key), None)
            if obj is not None:
                self._bytes -= len(obj.data)
                removed.append({**obj.entry(key), "bucket_id": bucket})
        return json_response(200, removed)


def _folder(name: str) -> dict[str, Any]:
    empty = dict.fromkeys(("id", "updated_at", "created_at", "last_accessed_at", "metadata"))
    return {"name": name, **empty}


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise _fault("InvalidRequest", "The body must be a JSON object")
    return data
