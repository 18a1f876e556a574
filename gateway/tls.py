"""The client TLS context of an upstream: verified, hostname checked, its CA bundle and client certificate.

Owns reading the ``tls:`` files (``ca_file``, ``cert_file``, ``key_file``) into an ``ssl.SSLContext``
and saying which file cannot be used and why (``errors.TlsFileError``). The config checks the files
with it when it loads; the pool builds its connector's context with it. It reads the settings
through a small protocol, so it depends on neither.
"""

from __future__ import annotations

import ssl
from typing import Protocol

from .errors import EncryptedKey, TlsFileError

__all__ = ["TlsFiles", "tls_context"]


class TlsFiles(Protocol):
    """The file paths of a ``tls:`` block (``config.TlsSpec`` is one)."""

    @property
    def ca_file(self) -> str | None: ...
    @property
    def cert_file(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...


def _no_password() -> str:
    raise EncryptedKey


def tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """The client TLS context for ``tls``: verified, hostname checked, with its CA bundle and
    client certificate. Raises TlsFileError naming the file that cannot be used and why."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise TlsFileError(key, f"cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except ssl.SSLError as exc:
        raise TlsFileError("ca_file", f"{tls.ca_file!r} holds no PEM CA certificate ({exc.reason or exc})") from None
    if tls.cert_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
        except EncryptedKey:
            where = "key_file" if tls.key_file else "cert_file"
            raise TlsFileError(where, "the private key is encrypted; give the gateway an unencrypted key") from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise TlsFileError("key_file", "the private key does not belong to the certificate") from None
            raise TlsFileError(
                "cert_file", f"cannot load a PEM certificate and its private key ({exc.reason or 'PEM lib'})"
            ) from None
    return context
