"""The simulated Supabase Auth (GoTrue) accounts, sessions and tokens (``gateway sim``).

Owns ``POST /auth/v1/token?grant_type=password`` (sign-in: an email's first sign-in makes its
account with that password; later ones need the same password, else 400 ``invalid_credentials``),
``?grant_type=refresh_token`` (a new session, the refresh token rotated: reusing a spent one is
400 ``refresh_token_already_used``, an unknown one 400 ``refresh_token_not_found``), ``POST
/auth/v1/logout?scope=global|local|others`` (204) and the user a sim-issued access token names for
``GET /auth/v1/user`` (403 ``session_not_found`` once its session is signed out, 403 ``bad_jwt``
once expired). Access tokens are HS256 JWTs with GoTrue's claims (``sub``, ``aud``, ``role``,
``session_id``, ``exp`` …) signed with a key of this process. Errors are ``ApiFault`` in GoTrue's
codes (``GOTRUE_CODES``), rendered by ``gotrue_error`` as ``{"code", "error_code", "msg"}``. At
most ``MAX_SESSIONS`` sessions are kept (the oldest are dropped, as if expired).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .common import EPOCH, ApiError, ApiFault, json_response, retry_after_header

__all__ = ["ACCESS_TTL", "GOTRUE_CODES", "Accounts", "gotrue_error", "user_json"]

ACCESS_TTL = 3600  # seconds, GoTrue's default JWT expiry
MAX_SESSIONS = 100_000
MIN_PASSWORD = 6


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def user_json(uid: str, email: str, created: str, signed_in: str | None = None) -> dict[str, Any]:
    """A GoTrue user object, as ``GET /auth/v1/user`` and sessions carry it."""
    return {
        "id": uid,
        "aud": "authenticated",
        "role": "authenticated",
        "email": email,
        "email_confirmed_at": created,
        "phone": "",
        "confirmed_at": created,
        "last_sign_in_at": signed_in or created,
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
        "identities": [],
        "created_at": created,
        "updated_at": signed_in or created,
        "is_anonymous": False,
    }


@dataclass(slots=True)
class _Account:
    uid: str
    email: str
    password_digest: bytes
    created: str
    signed_in: str | None = None


@dataclass(slots=True)
class _Session:
    sid: str
    email: str
    refresh: str
    spent: set[str] = field(default_factory=set)


def _auth(status: int, code: str, message: str) -> ApiFault:
    return ApiFault("auth", status, code, message)


class Accounts:
    """Accounts by email and sessions by id; ``now`` is the wall clock (JWT ``exp``, ``expires_at``)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self._key = secrets.token_bytes(32)
        self._salt = secrets.token_bytes(16)
        self._accounts: dict[str, _Account] = {}
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._by_refresh: dict[str, str] = {}  # refresh token (live or spent) -> session id

    # ---- endpoints

    def token(self, grant_type: str | None, body: bytes) -> web.Response:
        """``POST /auth/v1/token?grant_type=…``: a new session, as GoTrue answers it."""
        try:
            data = json.loads(body) if body else {}
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise _auth(400, "bad_json", "Could not parse request body as JSON")
        if grant_type == "password":
            return self._password(data)
        if grant_type == "refresh_token":
            return self._refresh(data)
        raise _auth(400, "validation_failed", f"unsupported_grant_type: {grant_type!r}")

    def logout(self, token: str | None, scope: str) -> web.Response:
        """``POST /auth/v1/logout``: sign out this session (``local``), all (``global``) or the others."""
        claims = self._claims(token)
        if claims is not None and scope in ("global", "local", "others"):
            sid = claims.get("session_id")
            for other in [s for s in self._sessions.values() if s.email == claims.get("email")]:
                if scope == "global" or (scope == "local") == (other.sid == sid):
                    self._drop(other.sid)
        return web.Response(status=204)

    def user(self, token: str | None) -> web.Response:
        """``GET /auth/v1/user``: the user of a sim-issued access token; any other token gets a user
        derived from it (the sim accepts the backend's own tokens)."""
        token = token or ""
        signed = self.user_for(token)
        if signed is not None:
            return json_response(200, signed)
        uid = uuid.UUID(bytes=hashlib.sha256(token.encode()).digest()[:16], version=4)
        stamp = EPOCH.isoformat().replace("+00:00", "Z")
        return json_response(200, user_json(str(uid), f"user-{uid.hex[:8]}@example.test", stamp))

    def user_for(self, token: str | None) -> dict[str, Any] | None:
        """The user of a sim-issued access token; None for any other token (the caller derives one).
        Raises ApiFault 403 ``bad_jwt`` (expired) or ``session_not_found`` (signed out)."""
        claims = self._claims(token)
        if claims is None:
            return None
        if float(claims.get("exp", 0)) <= self.now():
            raise _auth(403, "bad_jwt", "invalid JWT: unable to parse or verify signature, token has invalid claims")
        if claims.get("session_id") not in self._sessions:
            raise _auth(403, "session_not_found", "Session from session_id claim in JWT does not exist")
        account = self._accounts.get(str(claims.get("email")))
        if account is None:
            raise _auth(403, "user_not_found", "User from sub claim in JWT does not exist")
        return user_json(account.uid, account.email, account.created, account.signed_in)

    # ---- grants

    def _password(self, data: dict[str, Any]) -> web.Response:
        email, password = data.get("email"), data.get("password")
        if not isinstance(email, str) or "@" not in email:
            raise _auth(400, "validation_failed", "missing email or phone")
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise _auth(400, "invalid_credentials", "Invalid login credentials")
        email = email.strip().lower()
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), self._salt, 1000)
        account = self._accounts.get(email)
        if account is None:
            uid = str(uuid.UUID(bytes=hashlib.sha256(email.encode()).digest()[:16], version=4))
            account = self._accounts[email] = _Account(uid, email, digest, _stamp(self.now()))
        elif not hmac.compare_digest(account.password_digest, digest):
            raise _auth(400, "invalid_credentials", "Invalid login credentials")
        account.signed_in = _stamp(self.now())
        session = _Session(str(uuid.uuid4()), email, secrets.token_urlsafe(9))
        self._sessions[session.sid] = session
        self._by_refresh[session.refresh] = session.sid
        while len(self._sessions) > MAX_SESSIONS:
            self._drop(next(iter(self._sessions)))
        return self._answer(account, session)

    def _refresh(self, data: dict[str, Any]) -> web.Response:
        token = data.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise _auth(400, "validation_failed", "refresh_token required")
        sid = self._by_refresh.get(token)
        session = self._sessions.get(sid) if sid is not None else None
        if session is None:
            raise _auth(400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found")
        if token != session.refresh:
            raise _auth(400, "refresh_token_already_used", "Invalid Refresh Token: Already Used")
        session.spent.add(token)
        session.refresh = secrets.token_urlsafe(9)
        self._by_refresh[session.refresh] = session.sid
        self._sessions.move_to_end(session.sid)
        return self._answer(self._accounts[session.email], session)

    # ---- tokens

    def _answer(self, account: _Account, session: _Session) -> web.Response:
        now = int(self.now())
        claims = {
            "iss": "supabase-sim/auth/v1",
            "sub": account.uid,
            "aud": "authenticated",
            "exp": now + ACCESS_TTL,
            "iat": now,
            "email": account.email,
            "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {},
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}],
            "session_id": session.sid,
            "is_anonymous": False,
        }
        return json_response(
            200,
            {
                "access_token": self._sign(claims),
                "token_type": "bearer",
                "expires_in": ACCESS_TTL,
                "expires_at": now + ACCESS_TTL,
                "refresh_token": session.refresh,
                "user": user_json(account.uid, account.email, account.created, account.signed_in),
            },
        )

    def _sign(self, claims: dict[str, Any]) -> str:
        head = _b64(json.dumps({"alg": "HS256", "kid": "sim", "typ": "JWT"}, separators=(",", ":")).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(signature)}"

    def _claims(self, token: str | None) -> dict[str, Any] | None:
        """The claims of a token this sim signed; None for anything else."""
        if not token or token.count(".") != 2:
            return None
        head, body, signature = token.split(".")
        expected = hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(signature), expected):
                return None
            claims = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            return None
        return claims if isinstance(claims, dict) else None

    def _drop(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            for token in (session.refresh, *session.spent):
                self._by_refresh.pop(token, None)


# GoTrue (Supabase Auth): error_code → (HTTP status, msg).
GOTRUE_CODES: dict[str, tuple[int, str]] = {
    "validation_failed": (400, "Unable to validate request"),
    "no_authorization": (401, "This endpoint requires a valid Bearer token"),
    "bad_jwt": (403, "invalid JWT: unable to parse or verify signature, token is malformed"),
    "user_not_found": (403, "User from sub claim in JWT does not exist"),
    "session_not_found": (403, "Session from session_id claim in JWT does not exist"),
    "bad_json": (400, "Could not parse request body as JSON"),
    "invalid_credentials": (400, "Invalid login credentials"),
    "refresh_token_not_found": (400, "Invalid Refresh Token: Refresh Token Not Found"),
    "refresh_token_already_used": (400, "Invalid Refresh Token: Already Used"),
    "over_request_rate_limit": (429, "Request rate limit reached"),
    "unexpected_failure": (500, "Unexpected failure, please check server logs for more information"),
    "request_timeout": (504, "Processing this request timed out, please retry after a moment."),
}
_GOTRUE_BY_STATUS = {
    400: "validation_failed",
    401: "no_authorization",
    403: "bad_jwt",
    429: "over_request_rate_limit",
    504: "request_timeout",
}


def gotrue_error(error: ApiError) -> web.Response:
    """GoTrue's error body ``{"code": status, "error_code", "msg"}``."""
    name = str(error.code) if str(error.code) in GOTRUE_CODES else None
    if name is None:
        status = error.status or 500
        name = _GOTRUE_BY_STATUS.get(status, "unexpected_failure" if status >= 500 else "validation_failed")
    status = error.status or GOTRUE_CODES[name][0]
    message = error.message or GOTRUE_CODES[name][1]
    body = {"code": status, "error_code": name, "msg": message}
    return json_response(status, body, retry_after_header(error.retry_after))
