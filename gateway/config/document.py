"""The whole of gateway.yaml, as written, and the finished policies it resolves to.

Owns ``Config``: the root model (its blocks are ``spec``'s), the proxy variables of the
environment it was loaded with (``proxy: env`` reads them, as ``${VAR}`` does), and ``policies``:
every upstream's ``UpstreamPolicy``, inheritance applied, resolved once — ``parse_config`` resolves
them at load, and everything else (the runtime, ``gateway check``, ``/admin/config``) reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Self

from pydantic import Field, PrivateAttr

from .policy import UpstreamPolicy, resolve
from .spec import (
    AdminSpec,
    CacheStoreSpec,
    DrainSpec,
    ListenSpec,
    LogSpec,
    PoliciesSpec,
    ReadinessSpec,
    ServerSpec,
    Spec,
    UpstreamSpec,
)

__all__ = ["Config"]


class Config(Spec):
    """The whole of gateway.yaml, as written; ``policies``: what it resolves to (inheritance applied)."""

    listen: ListenSpec = ListenSpec()
    admin: AdminSpec = AdminSpec()
    log: LogSpec = LogSpec()
    drain: DrainSpec = DrainSpec()
    watch: bool = False
    cache_store: CacheStoreSpec = CacheStoreSpec()
    defaults: PoliciesSpec = PoliciesSpec()
    upstreams: dict[Annotated[str, Field(pattern=r"^[a-z0-9_\-]+$")], UpstreamSpec] = {}  # noqa: RUF012 (pydantic copies it)
    readiness: ReadinessSpec = ReadinessSpec()
    server: ServerSpec = ServerSpec()
    # The proxy variables of the environment the file was loaded with (``proxy: env``), as ${VAR}.
    _proxy_env: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def proxy_env(self) -> Mapping[str, str]:
        """The proxy variables of the environment the file was loaded with (``proxy_environment``)."""
        return self._proxy_env

    @cached_property
    def policies(self) -> tuple[UpstreamPolicy, ...]:
        """Every upstream's finished policies, inheritance applied: resolved once, on first use
        (``parse_config`` uses them for its checks, so a loaded Config arrives resolved)."""
        return resolve(self.defaults, self.upstreams, self._proxy_env)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, its policies resolved again when asked for (not the original's)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("policies", None)
        return copied
