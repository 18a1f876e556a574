"""The simulated Graph API's media and Meta's media host, lookaside (``gateway sim``).

Owns the media a client uploads (``POST /{ver}/{phone_id}/media``, multipart with ``file``,
``messaging_product`` and ``type``, answered ``{"id": …}``), deleting it (``DELETE /{ver}/{media_id}``
→ ``{"success": true}``), ``GET /{ver}/{media_id}`` (``media_url``: the description, with a URL on
the lookaside host) and the lookaside download ``GET /whatsapp_business/attachments/?mid=…``
(``download``). An id serves the uploaded bytes, else bytes derived from the id, so any id a
webhook names works. Errors are raised as ``ApiFault`` in Meta's codes: 100 (invalid parameter;
subcode 33 for an id that no longer exists), 131053 (media upload error).
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from .common import ApiFault, json_response, parse_form

__all__ = ["MAX_MEDIA_BYTES", "GraphMedia", "Media", "derived_bytes", "download", "media_url"]

MAX_MEDIA_BYTES = 100 * 1024 * 1024  # Meta's largest media type (documents)
KEEP_BYTES = 64 * 1024 * 1024  # uploads kept in memory; the oldest go first
KEEP_DELETED = 10_000  # ids remembered as deleted (answered "does not exist")


def derived_bytes(media_id: str, size: int) -> bytes:
    """Bytes for an id nobody uploaded: a JPEG start, then a pattern of the id (stable per id)."""
    seed = hashlib.sha256(media_id.encode()).digest()
    data = b"\xff\xd8\xff\xe0" + seed * (size // len(seed) + 1)
    return data[:size]


@dataclass(frozen=True, slots=True)
class Media:
    """What the media URL describes and the lookaside host serves for one id."""

    data: bytes
    mime_type: str
    filename: str | None = None


class GraphMedia:
    """Uploaded media by id (at most ``KEEP_BYTES``, oldest dropped first) and deleted ids."""

    def __init__(self, default_size: int, default_mime: str) -> None:
        self.default_size = default_size
        self.default_mime = default_mime
        self._items: OrderedDict[str, Media] = OrderedDict()
        self._bytes = 0
        self._deleted: OrderedDict[str, None] = OrderedDict()

    def get(self, media_id: str) -> Media:
        """The media for ``media_id``. Raises ApiFault (100, subcode 33) for a deleted id."""
        if media_id in self._deleted:
            raise ApiFault("graph", 400, 100, _missing(media_id), 33)
        found = self._items.get(media_id)
        if found is not None:
            return found
        return Media(derived_bytes(media_id, self.default_size), self.default_mime)

    def upload(self, content_type: str, body: bytes) -> web.Response:
        """``POST /{ver}/{phone_id}/media``: keep the file, answer its new id."""
        form = parse_form(content_type, body)
        if form is None:
            raise ApiFault("graph", 400, 100, "(#100) The request must be multipart/form-data with a file field")
        product = form.get("messaging_product")
        if product is None or product.text != "whatsapp":
            raise ApiFault("graph", 400, 100, "(#100) The parameter messaging_product is required.")
        file = form.get("file")
        if file is None or file.filename is None:
            raise ApiFault("graph", 400, 100, "(#100) The parameter file is required.")
        if not file.data:
            raise ApiFault("graph", 400, 131053, "(#131053) Media upload error: the file is empty")
        if len(file.data) > MAX_MEDIA_BYTES:
            raise ApiFault("graph", 400, 131053, "(#131053) Media upload error: the file is too large")
        declared = form.get("type")
        mime = (declared.text if declared is not None else None) or file.content_type or "application/octet-stream"
        media_id = str(10**15 + secrets.randbelow(9 * 10**15))
        self._items[media_id] = Media(file.data, mime, file.filename)
        self._bytes += len(file.data)
        while self._bytes > KEEP_BYTES and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped.data)
        return json_response(200, {"id": media_id})

    def delete(self, media_id: str) -> web.Response:
        """``DELETE /{ver}/{media_id}``: forget it; a second delete is told it does not exist."""
        if media_id in self._deleted:
            raise ApiFault("graph", 400, 100, _missing(media_id), 33)
        dropped = self._items.pop(media_id, None)
        if dropped is not None:
            self._bytes -= len(dropped.data)
        self._deleted[media_id] = None
        while len(self._deleted) > KEEP_DELETED:
            self._deleted.popitem(last=False)
        return json_response(200, {"success": True})


def _missing(object_id: str) -> str:
    return (
        f"Unsupported request - method type: get. Object with ID '{object_id}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation."
    )


def media_url(store: GraphMedia, media_id: str, base: str, expires: int) -> web.Response:
    """``GET /{ver}/{media_id}``: the media's description, with its URL on the lookaside host ``base``."""
    media = store.get(media_id)
    data = media.data
    url = (
        f"{base}/whatsapp_business/attachments/?mid={media_id}"
        f"&ext={expires}&hash={hashlib.sha256(media_id.encode()).hexdigest()[:20]}"
    )
    return json_response(
        200,
        {
            "messaging_product": "whatsapp",
            "url": url,
            "mime_type": media.mime_type,
            "sha256": hashlib.sha256(data).hexdigest(),
            "file_size": len(data),
            "id": media_id,
        },
    )


def download(store: GraphMedia, mid: str | None) -> web.Response:
    """The lookaside host's ``GET /whatsapp_business/attachments/?mid=…``: the bytes, or a plain 404."""
    if not mid:
        return web.Response(status=404, text="Not Found")
    try:
        media = store.get(mid)
    except ApiFault:  # deleted: the URL no longer works
        return web.Response(status=404, text="Not Found")
    return web.Response(body=media.data, headers={"Content-Type": media.mime_type})
