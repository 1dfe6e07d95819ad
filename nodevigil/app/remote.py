"""CLI commands that act through the running daemon's API: drain, undrain, cause, exclude,
incident, maintenance and leader; ``Api`` is the client the read-only views share
(``status_cli``)."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp

from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.core.config import load_config
from nodevigil.core.errors import NodevigilError
from nodevigil.core.tlsfiles import TlsFileError, client_context


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        try:
            return str(args.token_file.read_text()).strip()
        except OSError as exc:
            raise NodevigilError(f"cannot read {args.token_file}: {exc.strerror}") from None
    token = os.environ.get("NODEVIGIL_TOKEN", "").strip()
    if not token:
        raise NodevigilError("give --token-file FILE or set NODEVIGIL_TOKEN to an API token")
    return token


def add_connection_arguments(
    cmd: argparse.ArgumentParser, default_config: str | Path, *, role: str = "an admin token"
) -> None:
    """``-c``, ``--url`` and ``--token-file``: where the daemon's API is and how to get in."""
    cmd.add_argument("-c", "--config", default=default_config, type=Path)
    cmd.add_argument("--url", help="the API's base URL (default: from api.listen)")
    cmd.add_argument(
        "--token-file", type=Path, help=f"a file holding {role} (default: $NODEVIGIL_TOKEN)"
    )


class Api:
    """The running daemon's API, as ``args`` (``--url``/``-c``, ``--token-file``) name it."""

    def __init__(self, args: argparse.Namespace, *, timeout: float = 10) -> None:
        self.base = _base_url(args)
        self._headers = {"Authorization": f"Bearer {_token(args)}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = _tls() if self.base.startswith("https://") else None

    async def send(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """The HTTP status and the JSON answer (``{"error": text}`` when it is not JSON)."""
        url = self.base + path
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.request(
                    method, url, json=body, headers=self._headers, ssl=self._ssl or True
                ) as response,
            ):
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(f"cannot reach the daemon at {url}: {exc}") from None
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"error": text}
        return status, answer

    async def get(self, path: str) -> Any:
        """The JSON answer of ``GET path``; an error answer raises NodevigilError."""
        status, answer = await self.send("GET", path)
        if status >= 400:
            error = answer.get("error", answer) if isinstance(answer, dict) else answer
            raise NodevigilError(f"GET {path}: {error} (HTTP {status})")
        return answer


class Unreachable(NodevigilError):
    """The daemon's API did not answer (not running, wrong address, a timeout)."""


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    api = load_config(args.config, event_kinds=EVENT_KINDS).api
    host, _, port = api.listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host
    return f"{'https' if api.tls is not None else 'http'}://{host}:{port}"


def _tls() -> ssl.SSLContext | None:
    """The CLI's TLS towards an ``api.tls`` daemon: ``NODEVIGIL_CA_FILE`` (the CA that signed
    its certificate; default: the system's), ``NODEVIGIL_CLIENT_CERT`` and
    ``NODEVIGIL_CLIENT_KEY`` when it asks for a client certificate (``api.tls.client_ca_file``)."""
    ca, cert, key = (
        os.environ.get(name, "").strip() or None
        for name in ("NODEVIGIL_CA_FILE", "NODEVIGIL_CLIENT_CERT", "NODEVIGIL_CLIENT_KEY")
    )
    if ca is None and cert is None and key is None:
        return None  # the system's CAs, no client certificate
    if ca is None:
        raise NodevigilError("NODEVIGIL_CLIENT_CERT needs NODEVIGIL_CA_FILE (the API's CA)")
    try:
        return client_context(
            Path(ca), None if cert is None else Path(cert), None if key is None else Path(key)
        )
    except TlsFileError as exc:
        raise NodevigilError(f"NODEVIGIL_CA_FILE / NODEVIGIL_CLIENT_*: {exc}") from None


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The HTTP method, API path and JSON body for the subcommand."""
    if args.command == "cause":
        body = {"cause": args.cause, "note": args.note}
        return "POST", f"/api/v1/sla/intervals/{args.interval}/cause", body
    if args.command == "exclude":
        body = {"start": args.start, "end": args.end, "cause": args.cause, "note": args.note}
        return "POST", "/api/v1/sla/exclusions", {**body, "services": args.service}
    if args.command == "incident":
        return _incident_request(args)
    if args.command == "leader":
        if args.action == "show":
            return "GET", "/api/v1/cluster", None
        return "POST", "/api/v1/cluster/step-down", None
    if args.command == "maintenance":
        if args.action == "list":
            return "GET", "/api/v1/maintenance", None
        if args.action == "cancel":
            return "DELETE", f"/api/v1/maintenance/{args.id}", None
        body = {"start": args.start, "end": args.end, "services": args.service, "note": args.note}
        return "POST", "/api/v1/maintenance", body
    kind = "sites" if args.site else "nodes"
    body = {}
    if args.command == "drain":
        if args.duration:
            body["for"] = args.duration
        if args.reason:
            body["reason"] = args.reason
    return "POST", f"/api/v1/{kind}/{args.name}/{args.command}", body


def _incident_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    if args.action == "list":
        return "GET", f"/api/v1/incidents?state={'open' if args.open else 'all'}", None
    if args.action == "show":
        return "GET", f"/api/v1/incidents/{args.id}", None
    if args.action == "cause":
        return (
            "POST",
            f"/api/v1/incidents/{args.id}/cause",
            {"cause": args.cause, "note": args.note},
        )
    body: dict[str, Any] = {"message": args.message, "notify": not args.quiet}
    if args.state:
        body["state"] = args.state
    return "POST", f"/api/v1/incidents/{args.id}/updates", body


async def call_api(args: argparse.Namespace) -> int:
    """Send the subcommand to the daemon's API; print its answer."""
    method, path, body = _request(args)
    status, answer = await Api(args).send(method, path, body)
    if status >= 400:
        error = answer.get("error", answer) if isinstance(answer, dict) else answer
        print(f"nodevigil: {error} (HTTP {status})", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0
