"""CLI commands that act through the running daemon's API (drain, undrain)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import aiohttp

from nodevigil.config import load_config
from nodevigil.errors import NodevigilError


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        try:
            return str(args.token_file.read_text()).strip()
        except OSError as exc:
            raise NodevigilError(f"cannot read {args.token_file}: {exc.strerror}") from None
    token = os.environ.get("NODEVIGIL_TOKEN", "").strip()
    if not token:
        raise NodevigilError("give --token-file FILE or set NODEVIGIL_TOKEN to an admin token")
    return token


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    listen = load_config(args.config).api.listen
    host, _, port = listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host
    return f"http://{host}:{port}"


async def override(args: argparse.Namespace) -> int:
    """POST /api/v1/{nodes|sites}/NAME/{drain|undrain}; print the daemon's answer."""
    kind = "sites" if args.site else "nodes"
    url = f"{_base_url(args)}/api/v1/{kind}/{args.name}/{args.command}"
    body: dict[str, str] = {}
    if args.command == "drain":
        if args.duration:
            body["for"] = args.duration
        if args.reason:
            body["reason"] = args.reason
    headers = {"Authorization": f"Bearer {_token(args)}"}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers=headers) as response,
        ):
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise NodevigilError(f"cannot reach the daemon at {url}: {exc}") from None
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"error": text}
    if status >= 400:
        print(f"nodevigil: {answer.get('error', text)} (HTTP {status})", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0
