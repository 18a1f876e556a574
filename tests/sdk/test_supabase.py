"""supabase-py through the gateway: PostgREST, Auth and Storage calls, and every gateway error as
postgrest's ``APIError``, supabase-auth's ``AuthApiError``/``AuthRetryableError`` and storage3's
``StorageApiError`` with their fields filled (issue 15)."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase_auth.errors import AuthApiError, AuthError, AuthRetryableError

from .harness import BAD_TIMEOUT_HEADER, ERRORS, STATUS, TIGHT_BODY, Stack, provoke, recipe

KEY = "anon-key"
API_ERRORS = [e for e in ERRORS if e != "no_route"]  # no_route: a wrong base URL (measured separately)


def client(stack: Stack, prefix: str = "supabase") -> dict:
    """The README's setup; returns its namespace (``supabase``, ``http``, ``last_response``)."""
    return recipe("supabase", {'"http://127.0.0.1:8080/supabase"': f'"{stack.url}/{prefix}"'}, {"SUPABASE_KEY": KEY})


# ---------------------------------------------------------------- normal calls


def test_postgrest_select_insert_update_delete_rpc(stack):
    ns = client(stack)
    supabase = ns["supabase"]
    rows = supabase.table("conversations").select("id,name").eq("status", "open").order("id").limit(3).execute()
    assert [r["id"] for r in rows.data] == [1, 3, 5]
    assert ns["last_response"].get().headers["x-gateway-upstream"] == "supabase"
    found = supabase.table("conversations").select("id").ilike("name", "%ONS 1%").execute()
    assert [r["id"] for r in found.data][:2] == [1, 10]

    inserted = supabase.table("notes").insert({"name": "first", "status": "open"}).execute()
    new_id = inserted.data[0]["id"]
    assert inserted.data[0]["name"] == "first"
    updated = supabase.table("notes").update({"status": "closed"}).eq("id", new_id).execute()
    assert updated.data == [{**inserted.data[0], "status": "closed"}]
    deleted = supabase.table("notes").delete().eq("id", new_id).execute()
    assert [r["id"] for r in deleted.data] == [new_id]
    assert supabase.table("notes").select("id").eq("id", new_id).execute().data == []

    assert supabase.rpc("echo", {"a": 1, "b": "two"}).execute().data == {"a": 1, "b": "two"}
    assert supabase.rpc("count_rows", {"table": "notes"}).execute().data == 50


def test_auth_sign_in_get_user_refresh_sign_out(stack):
    supabase = client(stack)["supabase"]
    email = f"agent-{uuid.uuid4().hex[:6]}@example.test"
    signed = supabase.auth.sign_in_with_password({"email": email, "password": "s3cret-pass"})
    assert signed.user.email == email and signed.session.access_token.count(".") == 2
    user = supabase.auth.get_user(signed.session.access_token)
    assert user.user.id == signed.user.id
    refreshed = supabase.auth.refresh_session()
    assert refreshed.session.refresh_token != signed.session.refresh_token
    supabase.auth.sign_out()
    with pytest.raises(AuthApiError) as info:
        supabase.auth.get_user(refreshed.session.access_token)
    assert (info.value.status, info.value.code) == (403, "session_not_found")  # the sim's GoTrue, relayed


def test_storage_upload_download_list(stack):
    bucket = client(stack)["supabase"].storage.from_("media")
    data = bytes(range(256)) * 100
    uploaded = bucket.upload("chats/7/photo.jpg", data, {"content-type": "image/jpeg"})
    assert uploaded.path == "chats/7/photo.jpg"
    assert bucket.download("chats/7/photo.jpg") == data
    listed = bucket.list("chats/7")
    assert [(f["name"], f["metadata"]["size"]) for f in listed] == [("photo.jpg", len(data))]
    with pytest.raises(StorageApiError) as info:
        bucket.upload("chats/7/photo.jpg", b"again")
    assert (info.value.status, info.value.code) == ("409", "Duplicate")


@pytest.mark.slow
def test_a_client_timeout_above_total_gets_the_gateways_answer(stack, errors):
    """supabase-auth's own client gives up after 5 s; with the README's, the gateway's 504 arrives."""
    with stack.scenario(
        "upstreams: {supabase: {routes: {auth_token: {outages: [{start: 0s, duration: 1h, mode: timeout}]}}}}"
    ):
        documented = client(stack, "supabase-slow")["supabase"]
        started = time.monotonic()
        with pytest.raises(AuthRetryableError) as info:
            documented.auth.sign_in_with_password({"email": "a@example.test", "password": "s3cret-pass"})
        assert 5.5 < time.monotonic() - started < 12  # the gateway's total (6 s), not the SDK's 5 s
        assert info.value.status == 504 and info.value.message.endswith("[upstream_timeout]")

        from supabase import create_client

        default = create_client(f"{stack.url}/supabase-slow", KEY)  # without the README's httpx client
        with pytest.raises(AuthError) as bare:
            default.auth.sign_in_with_password({"email": "a@example.test", "password": "s3cret-pass"})
        assert isinstance(bare.value, AuthRetryableError) and bare.value.status == 0  # its own timeout: no answer


# ---------------------------------------------------------------- gateway errors


def _postgrest(supabase, error: str) -> APIError:
    query = supabase.table("conversations")
    with pytest.raises(APIError) as info:
        if error == "body_too_large":
            query.insert({"name": "x" * (TIGHT_BODY + 1)}).execute()
        else:
            query.select("*").limit(1).execute()
    return info.value


@pytest.mark.parametrize("error", API_ERRORS)
def test_postgrest_raises_api_error(stack, errors, error):
    with provoke(stack, error, "supabase") as prefix:
        ns = client(stack, prefix)
        if error == "bad_request":
            ns["http"].headers.update(BAD_TIMEOUT_HEADER)
        started = time.monotonic()
        err = _postgrest(ns["supabase"], error)
        took = time.monotonic() - started
    response = ns["last_response"].get()
    status = int(re.search(r"HTTP (\d{3})", err.details).group(1))
    assert (err.code, status, response.status_code) == (error, STATUS[error], STATUS[error])
    assert err.message.startswith("gateway, upstream") and err.hint
    assert f"x-request-id: {response.headers['x-request-id']}" in err.details
    assert took < 5.0  # postgrest_client_retry=False: one try (its default would wait 1 + 2 + 4 s more)
    errors.add(
        "supabase/postgrest",
        "select" if error != "body_too_large" else "insert",
        error,
        err,
        status,
        err.code,
        err.message,
    )


@pytest.mark.parametrize("error", API_ERRORS)
def test_auth_raises_its_own_errors(stack, errors, error):
    password = "x" * (TIGHT_BODY + 1) if error == "body_too_large" else "s3cret-pass"
    with provoke(stack, error, "supabase") as prefix:
        ns = client(stack, prefix)
        if error == "bad_request":
            ns["http"].headers.update(BAD_TIMEOUT_HEADER)
        with pytest.raises(AuthError) as info:
            ns["supabase"].auth.sign_in_with_password({"email": "a@example.test", "password": password})
    err = info.value
    assert err.status == STATUS[error] and err.message.startswith("gateway, upstream")
    assert err.message.endswith(f"[{error}]")
    if STATUS[error] in (502, 503, 504):  # supabase-auth's class for these statuses has no code
        assert isinstance(err, AuthRetryableError) and err.code is None
    else:
        assert type(err) is AuthApiError and err.code == error
    assert ns["last_response"].get().headers["x-gateway-error"] == error
    errors.add("supabase/auth", "sign_in_with_password", error, err, err.status, err.code, err.message)


@pytest.mark.parametrize("error", API_ERRORS)
def test_storage_raises_storage_api_error(stack, errors, error):
    with provoke(stack, error, "supabase") as prefix:
        ns = client(stack, prefix)
        if error == "bad_request":
            ns["http"].headers.update(BAD_TIMEOUT_HEADER)
        bucket = ns["supabase"].storage.from_("media")
        with pytest.raises(StorageApiError) as info:
            if error == "body_too_large":
                bucket.upload(f"big-{uuid.uuid4().hex}.bin", b"x" * (TIGHT_BODY + 1))
            else:
                bucket.list("chats")
    err = info.value
    assert (err.status, err.code) == (str(STATUS[error]), error)
    assert err.message.startswith("gateway, upstream")
    call = "upload" if error == "body_too_large" else "list"
    errors.add("supabase/storage3", call, error, err, err.status, err.code, err.message)


def test_no_route_is_a_wrong_base_url(stack, errors):
    """No upstream matched: the generic shape. The SDKs raise their own classes with the status;
    the generic body is not theirs, so what they read from it is measured here, not promised."""
    ns = client(stack, "nowhere")
    supabase = ns["supabase"]
    with pytest.raises(APIError) as rest:
        supabase.table("t").select("*").execute()
    assert ns["last_response"].get().status_code == 404
    errors.add("supabase/postgrest", "select", "no_route", rest.value, 404, rest.value.code, rest.value.message)
    with pytest.raises(AuthApiError) as auth:
        supabase.auth.sign_in_with_password({"email": "a@example.test", "password": "s3cret-pass"})
    assert auth.value.status == 404
    errors.add(
        "supabase/auth", "sign_in_with_password", "no_route", auth.value, 404, auth.value.code, auth.value.message
    )
    with pytest.raises(StorageApiError) as storage:
        supabase.storage.from_("media").list()
    assert storage.value.status == 404
    errors.add("supabase/storage3", "list", "no_route", storage.value, 404, storage.value.code, storage.value.message)


def test_the_shared_client_has_no_hidden_retries(stack):
    """One gateway try per SDK call for a failing read: the README's options leave retrying to the gateway."""
    with provoke(stack, "fault_injected", "supabase") as prefix:
        ns = client(stack, prefix)
        seen: list[httpx.Request] = []
        ns["http"].event_hooks["request"].append(seen.append)
        with pytest.raises(APIError):
            ns["supabase"].table("t").select("*").execute()
    assert len(seen) == 1
