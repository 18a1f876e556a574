"""The simulated Supabase PostgREST API, in memory (``gateway sim``), and its error shape.

Owns ``/rest/v1/{table}`` (``Tables``: tables made on first use with ``rows`` seeded rows each;
GET/HEAD with filters ``eq``, ``neq``, ``gt``/``gte``/``lt``/``lte``, ``in``, ``is``, ``like`` and
``ilike`` (each negated with ``not.``), ``order``, ``select`` with aliases, ``Range`` or
``offset``/``limit`` with PostgREST's ``Content-Range`` and 206/416 rules; POST/PUT (upsert with
``Prefer: resolution=merge-duplicates``), PATCH and DELETE with ``Prefer: return=representation``;
``Accept: application/vnd.pgrst.object+json`` for one object) and ``/rest/v1/rpc/{fn}`` (``echo``,
``count_rows``). Errors are PostgREST's ``{"code", "details", "hint", "message"}``
(``POSTGREST_CODES``, ``postgrest_error``; the platform's plain answer for 520/522/524/540/544),
and Supabase's API gateway refusing a request without ``apikey`` (``kong_no_apikey``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from .auth import GOTRUE_CODES
from .common import EPOCH, ApiError, json_response, retry_after_header

__all__ = ["POSTGREST_CODES", "POSTGREST_HEADERS", "RestError", "Tables", "kong_no_apikey", "postgrest_error"]

# PostgREST: code → (HTTP status, message). 503 PGRST000-002 carry Retry-After (reconnecting).
POSTGREST_CODES: dict[str, tuple[int, str]] = {
    "PGRST000": (503, "Database connection error. Retrying the connection."),
    "PGRST001": (503, "Database client error. Retrying the connection."),
    "PGRST002": (503, "Could not query the database for the schema cache. Retrying."),
    "PGRST003": (504, "Timed out acquiring connection from connection pool."),
    "PGRST100": (400, "Bad request"),
    "PGRST102": (400, "Empty or invalid json"),
    "PGRST103": (416, "Requested range not satisfiable"),
    "PGRST116": (406, "Cannot coerce the result to a single JSON object"),
    "PGRST202": (404, "Could not find the function in the schema cache"),
    "PGRST301": (401, "JWT could not be decoded"),
    "PGRST303": (401, "JWT expired"),
    "08006": (503, "connection failure"),
    "53300": (503, "sorry, too many clients already"),
    "23503": (409, "insert or update violates foreign key constraint"),
    "23505": (409, "duplicate key value violates unique constraint"),
    "40001": (500, "could not serialize access due to concurrent update"),
    "40P01": (500, "deadlock detected"),
    "42501": (403, "permission denied for table"),
    "42703": (400, "column does not exist"),
    "57014": (500, "canceling statement due to statement timeout"),
    "XX000": (500, "internal error"),
}
_POSTGREST_BY_STATUS = {
    400: "PGRST100",
    401: "PGRST301",
    403: "42501",
    406: "PGRST116",
    409: "23505",
    416: "PGRST103",
    500: "57014",
    503: "PGRST002",
    504: "PGRST003",
}
_POSTGREST_RETRY_AFTER = {"PGRST000", "PGRST001", "PGRST002"}
# Supabase's platform in front of PostgREST: proxy errors with a plain body, not PostgREST's JSON.
_PLATFORM_STATUSES = {520, 522, 524, 540, 544}


POSTGREST_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Vary": "Accept, Prefer, Range"}


def postgrest_error(
    error: ApiError, details: str | None = None, hint: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    """PostgREST's error body (or the platform's plain answer for 520/522/524/540/544)."""
    code = str(error.code) if str(error.code) in POSTGREST_CODES else None
    if code is None and error.code is not None and str(error.code) not in GOTRUE_CODES:
        code = str(error.code)  # a code the sim does not know, with its status (checked when loaded)
    if code is None:
        status = error.status or 503
        if status in _PLATFORM_STATUSES:
            text = f"error code: {status}"
            return web.Response(status=status, text=text, headers=retry_after_header(error.retry_after))
        code = _POSTGREST_BY_STATUS.get(status, "XX000" if status >= 500 else "PGRST100")
    status = error.status or POSTGREST_CODES.get(code, (500, ""))[0]
    message = error.message or POSTGREST_CODES.get(code, (status, "error"))[1]
    retry_after = error.retry_after
    if retry_after is None and code in _POSTGREST_RETRY_AFTER:
        retry_after = 1.0
    out = {**POSTGREST_HEADERS, "Proxy-Status": f"PostgREST; error={code}", **retry_after_header(retry_after)}
    body = {"code": code, "details": details, "hint": hint, "message": message}
    return json_response(status, body, {**out, **(headers or {})})


def kong_no_apikey() -> web.Response:
    """Supabase's API gateway refusing a request without ``apikey``."""
    return json_response(
        401, {"message": "No API key found in request", "hint": "No `apikey` request header or url param was found."}
    )


# --------------------------------------------------------------------------- tables in memory

_RESERVED_PARAMS = {"select", "order", "limit", "offset", "on_conflict", "columns", "apikey"}
_RANGE = re.compile(r"^(\d+)-(\d*)$")


class RestError(Exception):
    """A PostgREST error answer raised from inside the table logic."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        details: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code)
        self.code, self.message, self.details, self.headers = code, message, details, headers

    def response(self) -> web.Response:
        return postgrest_error(ApiError(None, self.code, None, self.message), self.details, None, self.headers)


def _like_regex(pattern: str) -> str:
    """SQL LIKE as a regex: ``%`` and ``*`` any run, ``_`` one character, the rest literal."""
    return "".join(".*" if ch in "%*" else "." if ch == "_" else re.escape(ch) for ch in pattern)


def _cell_text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _compare(value: object, arg: str) -> int:
    left = _cell_text(value)
    try:
        a, b = float(left), float(arg)
    except ValueError:
        return (left > arg) - (left < arg)
    return (a > b) - (a < b)


def _sort_key(column: str) -> Callable[[dict[str, Any]], tuple[bool, bool, float, str]]:
    """Order by ``column``: numbers numerically, then text, nulls last."""

    def key(row: dict[str, Any]) -> tuple[bool, bool, float, str]:
        value = row.get(column)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return False, False, float(value), ""
        return value is None, True, 0.0, _cell_text(value)

    return key


class Tables:
    """Tables created on first use with ``rows`` rows each; writes persist until the sim restarts."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._tables: dict[str, list[dict[str, Any]]] = {}

    def get(self, table: str) -> list[dict[str, Any]]:
        if table not in self._tables:
            self._tables[table] = [self._seed_row(table, i) for i in range(1, self.rows + 1)]
        return self._tables[table]

    @staticmethod
    def _seed_row(table: str, i: int) -> dict[str, Any]:
        stamp = (EPOCH + dt.timedelta(minutes=i)).isoformat()
        return {
            "id": i,
            "account_id": i % 3 + 1,
            "name": f"{table} {i}",
            "status": "open" if i % 2 else "closed",
            "created_at": stamp,
            "updated_at": stamp,
        }

    def select(self, table: str, query: Mapping[str, str], params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Rows matching the query's filters, in the query's order."""
        rows = [r for r in self.get(table) if self._matches(table, r, params)]
        order = query.get("order")
        if order:
            for term in reversed(order.split(",")):
                column, *mods = term.split(".")
                self._check_column(table, column)
                rows.sort(key=_sort_key(column), reverse="desc" in mods)
        return rows

    def _check_column(self, table: str, column: str) -> None:
        rows = self.get(table)
        if rows and column not in rows[0]:
            raise RestError("42703", f"column {table}.{column} does not exist")

    def _matches(self, table: str, row: dict[str, Any], params: list[tuple[str, str]]) -> bool:
        for column, expression in params:
            if column in _RESERVED_PARAMS:
                continue
            self._check_column(table, column)
            negate = expression.startswith("not.")
            op, _, arg = expression.removeprefix("not.").partition(".")
            value = row.get(column)
            if op == "eq":
                ok = _cell_text(value) == arg
            elif op == "neq":
                ok = _cell_text(value) != arg
            elif op in ("gt", "gte", "lt", "lte"):
                c = _compare(value, arg)
                ok = {"gt": c > 0, "gte": c >= 0, "lt": c < 0, "lte": c <= 0}[op]
            elif op == "in" and arg.startswith("(") and arg.endswith(")"):
                ok = _cell_text(value) in [v.strip().strip('"') for v in arg[1:-1].split(",")]
            elif op == "is" and arg in ("null", "true", "false"):
                ok = _cell_text(value) == arg
            elif op in ("like", "ilike"):  # PostgREST takes * for SQL's % (a URL-safe wildcard)
                flags = re.IGNORECASE if op == "ilike" else 0
                ok = re.fullmatch(_like_regex(arg), _cell_text(value), flags | re.DOTALL) is not None
            else:
                raise RestError("PGRST100", f'"failed to parse filter ({expression})" (line 1, column 1)')
            if ok == negate:
                return False
        return True

    def project(self, table: str, rows: list[dict[str, Any]], select: str | None) -> list[dict[str, Any]]:
        if not select or select.strip() == "*" or "(" in select:
            return rows
        columns = [c.strip().split("::")[0] for c in select.split(",") if c.strip()]
        names: list[tuple[str, str]] = []
        for column in columns:
            alias, _, real = column.rpartition(":")
            self._check_column(table, real)
            names.append((alias or real, real))
        return [{alias: r.get(real) for alias, real in names} for r in rows]

    # ---- the API

    def rest(self, request: web.BaseRequest, table: str, body: bytes) -> web.Response:
        """``/rest/v1/{table}``: read (GET, HEAD) or write (POST, PUT, PATCH, DELETE) rows."""
        try:
            return self._rest(request, table, body)
        except RestError as exc:
            return exc.response()

    def _rest(self, request: web.BaseRequest, table: str, body: bytes) -> web.Response:
        query = request.query
        params = [(k, v) for k, v in query.items() if k not in _RESERVED_PARAMS]
        prefer = {p.strip() for p in ",".join(request.headers.getall("Prefer", [])).split(",") if p.strip()}
        single = "application/vnd.pgrst.object+json" in request.headers.get("Accept", "")
        headers = dict(POSTGREST_HEADERS)
        if request.method in ("GET", "HEAD"):
            return self._rest_read(table, query, params, prefer, single, headers, request.headers.get("Range", ""))
        rows = self.get(table)
        if request.method == "POST" or request.method == "PUT":
            try:
                data = json.loads(body) if body else None
            except (ValueError, UnicodeDecodeError):
                data = None
            items: list[Any] = data if isinstance(data, list) else [data]
            if not items or not all(isinstance(i, dict) for i in items):
                raise RestError("PGRST102")
            merge = request.method == "PUT" or "resolution=merge-duplicates" in prefer
            changed = self._upsert(table, rows, items, merge)
            status = 201 if request.method == "POST" else 200
        else:
            matched = [r for r in rows if self._matches(table, r, params)]
            if request.method == "PATCH":
                try:
                    patch = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    patch = None
                if not isinstance(patch, dict):
                    raise RestError("PGRST102")
                for row in matched:
                    row.update(patch)
            else:  # DELETE
                ids = {id(r) for r in matched}
                rows[:] = [r for r in rows if id(r) not in ids]
            changed, status = matched, 200
        headers["Content-Range"] = f"0-{len(changed) - 1}/*" if changed and request.method == "PATCH" else "*/*"
        if "return=representation" not in prefer:
            return web.Response(status=201 if request.method == "POST" else 204, headers=headers)
        projected = self.project(table, changed, query.get("select"))
        if single:
            if len(projected) != 1:
                raise RestError("PGRST116", None, f"The result contains {len(projected)} rows")
            return json_response(status, projected[0], headers)
        return json_response(status, projected, headers)

    def _upsert(
        self, table: str, rows: list[dict[str, Any]], items: list[dict[str, Any]], merge: bool
    ) -> list[dict[str, Any]]:
        by_id = {_cell_text(r.get("id")): r for r in rows}
        next_id = max((r["id"] for r in rows if isinstance(r.get("id"), int)), default=0) + 1
        changed = []
        for item in items:
            if "id" not in item:
                item = {"id": next_id, **item}
                next_id += 1
            existing = by_id.get(_cell_text(item["id"]))
            if existing is not None:
                if not merge:
                    raise RestError(
                        "23505",
                        f'duplicate key value violates unique constraint "{table}_pkey"',
                        f"Key (id)=({item['id']}) already exists.",
                    )
                existing.update(item)
                changed.append(existing)
            else:
                row = dict(item)
                rows.append(row)
                by_id[_cell_text(row["id"])] = row
                changed.append(row)
        return changed

    def _rest_read(
        self,
        table: str,
        query: Mapping[str, str],
        params: list[tuple[str, str]],
        prefer: set[str],
        single: bool,
        headers: dict[str, str],
        range_header: str,
    ) -> web.Response:
        """PostgREST's paging: ``Range: a-b`` or ``offset``/``limit``, its Content-Range and status rules."""
        rows = self.select(table, query, params)
        lower, upper = 0, None
        match = _RANGE.match(range_header.strip())
        if match:
            lower = int(match.group(1))
            upper = int(match.group(2)) if match.group(2) else None
        if query.get("offset", "").isdigit():
            lower = int(query["offset"])
        if query.get("limit", "").isdigit():
            limit = int(query["limit"])
            upper = lower + limit - 1 if upper is None else min(upper, lower + limit - 1)
        page = rows[lower : (upper + 1 if upper is not None else None)] if upper is None or upper >= lower else []
        total = len(rows) if any(p.startswith("count=") for p in prefer) else None
        last = lower + len(page) - 1
        shown = f"{lower}-{last}" if total != 0 and lower <= last else "*"
        headers["Content-Range"] = f"{shown}/{total if total is not None else '*'}"
        if total is not None and lower > total:
            details = f"An offset of {lower} was requested, but there are only {total} rows."
            raise RestError("PGRST103", None, details, {"Content-Range": f"*/{total}"})
        status = 206 if total is not None and len(page) < total else 200
        projected = self.project(table, page, query.get("select"))
        if single:
            if len(projected) != 1:
                raise RestError("PGRST116", None, f"The result contains {len(projected)} rows")
            return json_response(200, projected[0], headers)
        return json_response(status, projected, headers)

    def rpc(self, request: web.BaseRequest, fn: str, body: bytes) -> web.Response:
        """``/rest/v1/rpc/{fn}``: ``echo`` answers its arguments, ``count_rows`` a table's row count."""
        args: Any = dict(request.query) if request.method in ("GET", "HEAD") else None
        if args is None:
            try:
                args = json.loads(body) if body else {}
            except (ValueError, UnicodeDecodeError):
                args = None
        try:
            if not isinstance(args, dict):
                raise RestError("PGRST102")
            if fn == "echo":
                return json_response(200, args, POSTGREST_HEADERS)
            if fn == "count_rows" and isinstance(args.get("table"), str) and args["table"]:
                return json_response(200, len(self.get(args["table"])), POSTGREST_HEADERS)
            named = ", ".join(sorted(args))
            raise RestError(
                "PGRST202",
                f"Could not find the function public.{fn}({named}) in the schema cache",
                "Searched for "
                f"the function public.{fn} with parameters {named or '(none)'}; the sim has echo and count_rows(table)",
            )
        except RestError as exc:
            return exc.response()
