"""The simulator's endpoints that the official SDKs call (issue 15), in the real APIs' shapes.

Raw HTTP against an in-process sim: Graph media upload/URL/download/delete and business profile,
Gemini countTokens and embeddings, PostgREST rpc and ilike, GoTrue token grants, logout and
get-user, Storage objects and buckets. Then scenarios on the new route names, and where media URLs
point (Graph's host, the forwarding gateway, ``--lookaside-url``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math

import aiohttp
import pytest

from gateway_sim import ROUTES, start_sim

from .test_sim import FREE, GEMINI_KEY, GRAPH_AUTH, SUPA, call, stats
from .test_sim import sims as _sims_fixture

sims = pytest.fixture(_sims_fixture.__wrapped__)  # the same fixture, under its own name here

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def _form(**fields: tuple[str | None, bytes, str | None]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, (filename, data, kind) in fields.items():
        if filename is None:
            form.add_field(name, data.decode())
        else:
            form.add_field(name, data, filename=filename, content_type=kind)
    return form


# --------------------------------------------------------------------------- Graph


async def test_uploaded_media_is_what_its_url_describes_and_serves(sims):
    sim = await sims()
    form = _form(
        file=("a.png", PNG, "image/png"), messaging_product=(None, b"whatsapp", None), type=(None, b"image/png", None)
    )
    status, _, body = await call(sims, sim, "graph", "POST", "/v21.0/1234/media", data=form, headers=GRAPH_AUTH)
    media_id = json.loads(body)["id"]
    assert status == 200 and media_id.isdigit()

    status, _, body = await call(sims, sim, "graph", "GET", f"/v21.0/{media_id}", headers=GRAPH_AUTH)
    info = json.loads(body)
    assert status == 200 and info["id"] == media_id
    assert (info["mime_type"], info["file_size"], info["sha256"]) == (
        "image/png",
        len(PNG),
        hashlib.sha256(PNG).hexdigest(),
    )
    url = info["url"].replace("https://lookaside.fbsbx.com", sim.url("lookaside"), 1)
    status, headers, data = await call(
        sims, sim, "lookaside", "GET", url[len(sim.url("lookaside")) :], headers=GRAPH_AUTH
    )
    assert (status, headers["Content-Type"], data) == (200, "image/png", PNG)

    status, _, body = await call(sims, sim, "graph", "DELETE", f"/v21.0/{media_id}", headers=GRAPH_AUTH)
    assert (status, json.loads(body)) == (200, {"success": True})
    status, _, body = await call(sims, sim, "graph", "GET", f"/v21.0/{media_id}", headers=GRAPH_AUTH)
    error = json.loads(body)["error"]
    assert status == 400 and (error["code"], error["error_subcode"]) == (100, 33)
    status, _, _ = await call(sims, sim, "lookaside", "GET", url[len(sim.url("lookaside")) :], headers=GRAPH_AUTH)
    assert status == 404


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"file": ("a.png", PNG, "image/png")}, 100),  # no messaging_product
        ({"messaging_product": (None, b"whatsapp", None)}, 100),  # no file
        ({"file": ("a.png", b"", "image/png"), "messaging_product": (None, b"whatsapp", None)}, 131053),
    ],
)
async def test_a_bad_upload_gets_metas_error(sims, form, code):
    sim = await sims()
    status, _, body = await call(sims, sim, "graph", "POST", "/v21.0/1/media", data=_form(**form), headers=GRAPH_AUTH)
    assert status == 400 and json.loads(body)["error"]["code"] == code


async def test_business_profile(sims):
    sim = await sims()
    path = "/v21.0/1234/whatsapp_business_profile?fields=about,vertical"
    status, _, body = await call(sims, sim, "graph", "GET", path, headers=GRAPH_AUTH)
    profile = json.loads(body)["data"][0]
    assert status == 200 and profile["messaging_product"] == "whatsapp" and profile["vertical"] == "OTHER"


async def test_media_urls_name_graphs_host_the_forwarding_gateway_or_the_configured_base(sims):
    sim = await sims()
    _, _, body = await call(sims, sim, "graph", "GET", "/v21.0/55", headers=GRAPH_AUTH)
    assert json.loads(body)["url"].startswith("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=55&")
    forwarded = {**GRAPH_AUTH, "X-Forwarded-Host": "gw.internal:8080", "X-Forwarded-Proto": "http"}
    _, _, body = await call(sims, sim, "graph", "GET", "/v21.0/55", headers=forwarded)
    assert json.loads(body)["url"].startswith(
        "http://gw.internal:8080/lookaside/whatsapp_business/attachments/?mid=55&"
    )
    bad = {**GRAPH_AUTH, "X-Forwarded-Host": "evil/path?x"}
    _, _, body = await call(sims, sim, "graph", "GET", "/v21.0/55", headers=bad)
    assert json.loads(body)["url"].startswith("https://lookaside.fbsbx.com/")
    configured = await start_sim(ports=FREE, lookaside_url="http://127.0.0.1:9999/lookaside/")
    try:
        _, _, body = await call(sims, configured, "graph", "GET", "/v21.0/55", headers=forwarded)
        assert json.loads(body)["url"].startswith("http://127.0.0.1:9999/lookaside/whatsapp_business/attachments/")
    finally:
        await configured.close()


# --------------------------------------------------------------------------- Gemini


async def test_count_tokens_and_embeddings(sims):
    sim = await sims()
    contents = {"contents": [{"role": "user", "parts": [{"text": "x" * 40}, {"text": "hello"}]}]}
    status, _, body = await call(
        sims, sim, "gemini", "POST", "/v1beta/models/gemini-2.5-flash:countTokens", json=contents, headers=GEMINI_KEY
    )
    assert status == 200 and json.loads(body)["totalTokens"] == 10 + math.ceil(5 / 4)

    one = {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 16}
    status, _, body = await call(
        sims, sim, "gemini", "POST", "/v1/models/text-embedding-004:embedContent", json=one, headers=GEMINI_KEY
    )
    values = json.loads(body)["embedding"]["values"]
    assert status == 200 and len(values) == 16 and abs(sum(v * v for v in values) - 1) < 1e-3

    batch = {
        "requests": [
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "hello"}]},
                "outputDimensionality": 16,
            },
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "other"}]}},
        ]
    }
    path = "/v1beta/models/text-embedding-004:batchEmbedContents"
    status, _, body = await call(sims, sim, "gemini", "POST", path, json=batch, headers=GEMINI_KEY)
    embeddings = json.loads(body)["embeddings"]
    assert status == 200 and embeddings[0]["values"] == values and len(embeddings[1]["values"]) == 768

    batch["requests"][1]["model"] = "models/other"
    status, _, body = await call(sims, sim, "gemini", "POST", path, json=batch, headers=GEMINI_KEY)
    assert status == 400 and json.loads(body)["error"]["status"] == "INVALID_ARGUMENT"


# --------------------------------------------------------------------------- PostgREST


async def test_rpc_and_ilike(sims):
    sim = await sims("upstreams: {supabase: {rows: 12}}")
    status, _, body = await call(sims, sim, "supabase", "POST", "/rest/v1/rpc/echo", json={"a": 1}, headers=SUPA)
    assert (status, json.loads(body)) == (200, {"a": 1})
    status, _, body = await call(
        sims, sim, "supabase", "POST", "/rest/v1/rpc/count_rows", json={"table": "t"}, headers=SUPA
    )
    assert (status, json.loads(body)) == (200, 12)
    status, _, body = await call(sims, sim, "supabase", "POST", "/rest/v1/rpc/nope", json={"x": 1}, headers=SUPA)
    assert status == 404 and json.loads(body)["code"] == "PGRST202"

    status, _, body = await call(sims, sim, "supabase", "GET", "/rest/v1/t?name=ilike.*T%201*&select=id", headers=SUPA)
    assert status == 200 and [r["id"] for r in json.loads(body)] == [1, 10, 11, 12]
    status, _, body = await call(sims, sim, "supabase", "GET", "/rest/v1/t?name=like.T%201*", headers=SUPA)
    assert (status, json.loads(body)) == (200, [])  # like is case-sensitive


# --------------------------------------------------------------------------- GoTrue


def _claims(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


async def test_password_sign_in_refresh_rotation_get_user_and_logout(sims):
    sim = await sims()
    credentials = {"email": "Ana@Example.test", "password": "secret-1"}
    status, _, body = await call(
        sims, sim, "supabase", "POST", "/auth/v1/token?grant_type=password", json=credentials, headers=SUPA
    )
    session = json.loads(body)
    assert status == 200 and session["token_type"] == "bearer" and session["user"]["email"] == "ana@example.test"
    claims = _claims(session["access_token"])
    assert (claims["sub"], claims["role"], claims["aud"]) == (session["user"]["id"], "authenticated", "authenticated")
    assert session["expires_at"] == claims["exp"]

    wrong = {**credentials, "password": "secret-2"}
    status, _, body = await call(
        sims, sim, "supabase", "POST", "/auth/v1/token?grant_type=password", json=wrong, headers=SUPA
    )
    assert (status, json.loads(body)["error_code"]) == (400, "invalid_credentials")

    bearer = {**SUPA, "Authorization": f"Bearer {session['access_token']}"}
    status, _, body = await call(sims, sim, "supabase", "GET", "/auth/v1/user", headers=bearer)
    assert (status, json.loads(body)["id"]) == (200, session["user"]["id"])

    refresh = {"refresh_token": session["refresh_token"]}
    path = "/auth/v1/token?grant_type=refresh_token"
    status, _, body = await call(sims, sim, "supabase", "POST", path, json=refresh, headers=SUPA)
    renewed = json.loads(body)
    assert status == 200 and renewed["refresh_token"] != session["refresh_token"]
    status, _, body = await call(sims, sim, "supabase", "POST", path, json=refresh, headers=SUPA)
    assert (status, json.loads(body)["error_code"]) == (400, "refresh_token_already_used")
    status, _, body = await call(sims, sim, "supabase", "POST", path, json={"refresh_token": "nope"}, headers=SUPA)
    assert (status, json.loads(body)["error_code"]) == (400, "refresh_token_not_found")

    bearer = {**SUPA, "Authorization": f"Bearer {renewed['access_token']}"}
    status, _, _ = await call(sims, sim, "supabase", "POST", "/auth/v1/logout?scope=local", headers=bearer)
    assert status == 204
    status, _, body = await call(sims, sim, "supabase", "GET", "/auth/v1/user", headers=bearer)
    assert (status, json.loads(body)["error_code"]) == (403, "session_not_found")


# --------------------------------------------------------------------------- Storage


async def test_storage_upload_download_list_delete(sims):
    sim = await sims()
    base = "/storage/v1/object"
    form = _form(file=("a.png", PNG, "image/png"), cacheControl=(None, b"60", None))
    status, _, body = await call(sims, sim, "supabase", "POST", f"{base}/media/chats/42/a.png", data=form, headers=SUPA)
    assert status == 200 and json.loads(body)["Key"] == "media/chats/42/a.png"
    status, _, body = await call(
        sims,
        sim,
        "supabase",
        "POST",
        f"{base}/media/chats/42/a.png",
        data=_form(file=("a", b"x", "text/plain")),
        headers=SUPA,
    )
    assert status == 409 and json.loads(body) == {
        "statusCode": "409",
        "code": "Duplicate",
        "error": "Duplicate",
        "message": "The resource already exists",
    }
    status, _, _ = await call(
        sims,
        sim,
        "supabase",
        "POST",
        f"{base}/media/chats/42/b.txt",
        data=b"hi",
        headers={**SUPA, "Content-Type": "text/plain"},
    )
    assert status == 200

    status, headers, data = await call(
        sims, sim, "supabase", "GET", f"{base}/authenticated/media/chats/42/a.png", headers=SUPA
    )
    assert (status, headers["Content-Type"], headers["Cache-Control"], data) == (200, "image/png", "max-age=60", PNG)

    listing = {"prefix": "chats/42", "limit": 10, "offset": 0, "sortBy": {"column": "name", "order": "desc"}}
    status, _, body = await call(sims, sim, "supabase", "POST", f"{base}/list/media", json=listing, headers=SUPA)
    entries = json.loads(body)
    assert status == 200 and [e["name"] for e in entries] == ["b.txt", "a.png"]
    assert entries[1]["metadata"]["size"] == len(PNG) and entries[1]["metadata"]["mimetype"] == "image/png"
    status, _, body = await call(sims, sim, "supabase", "POST", f"{base}/list/media", json={"prefix": ""}, headers=SUPA)
    assert [(e["name"], e["id"]) for e in json.loads(body)] == [("chats", None)]

    status, _, body = await call(
        sims, sim, "supabase", "DELETE", f"{base}/media", json={"prefixes": ["chats/42/a.png"]}, headers=SUPA
    )
    assert status == 200 and [e["name"] for e in json.loads(body)] == ["chats/42/a.png"]
    status, _, body = await call(sims, sim, "supabase", "GET", f"{base}/media/chats/42/a.png", headers=SUPA)
    assert (status, json.loads(body)["code"]) == (404, "NoSuchKey")
    status, _, body = await call(sims, sim, "supabase", "POST", f"{base}/nobucket/x", data=b"x", headers=SUPA)
    assert (status, json.loads(body)["code"]) == (404, "NoSuchBucket")


async def test_storage_buckets(sims):
    sim = await sims()
    status, _, body = await call(sims, sim, "supabase", "POST", "/storage/v1/bucket", json={"name": "x"}, headers=SUPA)
    assert (status, json.loads(body)) == (200, {"name": "x"})
    status, _, body = await call(sims, sim, "supabase", "GET", "/storage/v1/bucket", headers=SUPA)
    assert {"media", "avatars", "documents", "x"} <= {b["id"] for b in json.loads(body)}


# --------------------------------------------------------------------------- scenarios on the new routes


@pytest.mark.parametrize(
    ("upstream", "route", "method", "path", "kwargs", "check"),
    [
        ("graph", "media_upload", "POST", "/v21.0/1/media", {"data": b"x"}, lambda d: d["error"]["code"] == 131000),
        (
            "gemini",
            "count_tokens",
            "POST",
            "/v1beta/models/m:countTokens",
            {"json": {}},
            lambda d: d["error"]["code"] == 503,
        ),
        (
            "gemini",
            "embed",
            "POST",
            "/v1beta/models/m:batchEmbedContents",
            {"json": {}},
            lambda d: "status" in d["error"],
        ),
        ("supabase", "rpc", "POST", "/rest/v1/rpc/echo", {"json": {}}, lambda d: d["code"] == "PGRST002"),
        (
            "supabase",
            "auth_token",
            "POST",
            "/auth/v1/token?grant_type=password",
            {"json": {}},
            lambda d: "error_code" in d,
        ),
        (
            "supabase",
            "storage_list",
            "POST",
            "/storage/v1/object/list/media",
            {"json": {}},
            lambda d: "statusCode" in d,
        ),
        (
            "supabase",
            "storage_upload",
            "POST",
            "/storage/v1/object/media/a",
            {"data": b"x"},
            lambda d: d["code"] == "InternalError",
        ),
    ],
)
async def test_scenarios_apply_to_the_new_routes_in_each_apis_shape(sims, upstream, route, method, path, kwargs, check):
    assert route in ROUTES[upstream]
    sim = await sims(f"upstreams: {{{upstream}: {{routes: {{{route}: {{errors: {{rate: 100%}}}}}}}}}}")
    auth = {"graph": GRAPH_AUTH, "gemini": GEMINI_KEY, "supabase": SUPA}[upstream]
    status, _, body = await call(sims, sim, upstream, method, path, headers=auth, **kwargs)
    assert status >= 500 and check(json.loads(body)), body
    counted = (await stats(sims, sim))["upstreams"][upstream]["routes"][route]
    assert (counted["requests"], counted["injected"]) == (1, 1)
