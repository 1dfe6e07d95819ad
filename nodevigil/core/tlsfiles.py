"""TLS client contexts from the files a configuration names, with reasons that name the file.

The etcd client builds its context here, and the configuration schema loads the same files the
same way when ``check-config`` (or the start) reads a configuration file: a file the daemon would
refuse is refused by check-config first, for the same reason.
"""

from __future__ import annotations

import ssl
from pathlib import Path

# OpenSSL's reason when a private key is not the certificate's.
_KEY_MISMATCH = "KEY_VALUES_MISMATCH"


class TlsFileError(ValueError):
    """A TLS file cannot be used; ``key`` is its configuration key (``ca_file``, ...)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def _readable(key: str, path: Path) -> None:
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise TlsFileError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _no_passphrase() -> bytes:
    # OpenSSL would otherwise prompt on the terminal: a daemon has none, and would hang.
    raise TlsFileError(
        "key_file",
        "the key is encrypted: nodevigil cannot ask for a passphrase; give it an "
        "unencrypted key that only nodevigil's user can read",
    )


def client_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context that trusts ``ca_file`` only (never the system's CAs), checks the
    server's name, and presents ``cert_file``/``key_file`` when given (both or neither).

    Raises TlsFileError naming the key of the file at fault and why.
    """
    if (cert_file is None) != (key_file is None):
        missing = "key_file" if key_file is None else "cert_file"
        raise TlsFileError(missing, "required with the other: a client certificate needs its key")
    _readable("ca_file", ca_file)
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise TlsFileError(
            "ca_file", f"{ca_file} holds no PEM certificate ({exc.reason or exc})"
        ) from None
    if cert_file is None or key_file is None:
        return context
    _readable("cert_file", cert_file)
    _readable("key_file", key_file)
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=_no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == _KEY_MISMATCH:
            raise TlsFileError(
                "key_file", f"{key_file} is not the key of cert_file {cert_file}"
            ) from None
        raise TlsFileError(
            "cert_file",
            f"{cert_file} with key_file {key_file}: not a PEM certificate and its PEM key "
            f"({exc.reason or exc})",
        ) from None
    return context


def server_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None = None
) -> ssl.SSLContext:
    """A server context presenting ``cert_file``/``key_file`` (TLS 1.2 at least); with
    ``client_ca_file``, every client must present a certificate that CA signed (mutual TLS).

    Raises TlsFileError naming the key of the file at fault and why.
    """
    _readable("cert_file", cert_file)
    _readable("key_file", key_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=_no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == _KEY_MISMATCH:
            raise TlsFileError(
                "key_file", f"{key_file} is not the key of cert_file {cert_file}"
            ) from None
        raise TlsFileError(
            "cert_file",
            f"{cert_file} with key_file {key_file}: not a PEM certificate and its PEM key "
            f"({exc.reason or exc})",
        ) from None
    if client_ca_file is not None:
        _readable("client_ca_file", client_ca_file)
        try:
            context.load_verify_locations(cafile=str(client_ca_file))
        except ssl.SSLError as exc:
            raise TlsFileError(
                "client_ca_file",
                f"{client_ca_file} holds no PEM certificate ({exc.reason or exc})",
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
