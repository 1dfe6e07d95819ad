"""Request limits, tried with raw sockets against the real daemon.

The package's world runs with ``header_timeout: 1s``, ``body_timeout: 1s`` and
``max_body: 65536``. Each test waits for the daemon to act under a generous deadline (many
times the configured limit): it proves the connection is cut off, not how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from tests.api.world import ADMIN, World

DEADLINE = 15.0  # seconds: far above every configured limit, far below the test timeout


@contextlib.asynccontextmanager
async def connection(
    world: World,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    url = urlsplit(world.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, headers, body), then whatever the server sends until it
    closes the connection: a refusal must close it."""
    raw = await asyncio.wait_for(reader.read(), DEADLINE)  # until EOF
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def request_head(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", f"Authorization: Bearer {ADMIN}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_error(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers["content-type"].startswith("application/json"), (status, headers, body)
    error = json.loads(body)["error"]
    assert isinstance(error, str)
    return error


async def test_a_declared_oversized_body_is_refused_before_it_is_read(world: World) -> None:
    async with connection(world) as (reader, writer):
        writer.write(
            request_head(
                "POST", "/api/v1/sla/charges", "Content-Type: text/csv", "Content-Length: 10000000"
            )
        )
        writer.write(b"x" * 1000)  # and no more: the refusal must not wait for the rest
        await writer.drain()
        status, headers, body = await read_response(reader)
    assert status == 413
    assert json_error(status, headers, body) == "the body is larger than the limit of 65536 bytes"


async def test_a_chunked_oversized_body_is_refused(world: World) -> None:
    async with connection(world) as (reader, writer):
        writer.write(
            request_head(
                "POST",
                "/api/v1/sla/charges",
                "Content-Type: text/csv",
                "Transfer-Encoding: chunked",
            )
        )
        chunk = b"y" * 8192
        with contextlib.suppress(ConnectionError):
            for _ in range(16):  # 128 KiB in 8 KiB chunks, twice the limit
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        status, headers, body = await read_response(reader)
    assert status == 413 and "65536 bytes" in json_error(status, headers, body)


async def test_a_compressed_body_is_limited_after_decompression(world: World) -> None:
    bomb = gzip.compress(b"{" + b" " * 20_000_000 + b"}")  # 20 MB of JSON in about 20 KB
    assert len(bomb) < 65536
    async with connection(world) as (reader, writer):
        writer.write(
            request_head(
                "POST",
                "/api/v1/maintenance",
                "Content-Type: application/json",
                "Content-Encoding: gzip",
                f"Content-Length: {len(bomb)}",
            )
            + bomb
        )
        await writer.drain()
        status, headers, body = await read_response(reader)
    assert status == 413 and "65536 bytes" in json_error(status, headers, body)


async def test_a_corrupt_compressed_body_is_a_400(world: World) -> None:
    garbage = b"\x1f\x8b\x08\x00" + b"not gzip at all" * 10
    async with connection(world) as (reader, writer):
        writer.write(
            request_head(
                "POST",
                "/api/v1/maintenance",
                "Content-Type: application/json",
                "Content-Encoding: gzip",
                f"Content-Length: {len(garbage)}",
            )
            + garbage
        )
        await writer.drain()
        status, headers, body = await read_response(reader)
    assert status == 400
    assert json_error(status, headers, body).startswith("the body cannot be read")


async def test_a_body_sent_byte_by_byte_is_cut_off(world: World) -> None:
    async with connection(world) as (reader, writer):
        writer.write(
            request_head(
                "POST", "/api/v1/sla/charges", "Content-Type: text/csv", "Content-Length: 1000"
            )
        )
        await writer.drain()

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(1000):
                    writer.write(b"c")
                    await writer.drain()
                    await asyncio.sleep(0.1)

        task = asyncio.create_task(dribble())
        try:
            status, headers, body = await read_response(reader)
        finally:
            task.cancel()
    assert status == 408
    assert json_error(status, headers, body) == "the body did not arrive within 1s"
    assert not task.done() or task.cancelled()  # the client was still sending


async def test_a_request_head_sent_byte_by_byte_is_cut_off(world: World) -> None:
    async with connection(world) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        await writer.drain()
        started = time.monotonic()

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                while True:  # a header value that never ends, well within max_header_size
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(0.1)

        task = asyncio.create_task(dribble())
        try:
            received = await asyncio.wait_for(reader.read(), DEADLINE)
        finally:
            task.cancel()
    assert received == b""  # closed without an answer: no request was ever complete
    assert time.monotonic() - started < DEADLINE


async def test_a_silent_connection_is_closed(world: World) -> None:
    async with connection(world) as (reader, _):
        received = await asyncio.wait_for(reader.read(), DEADLINE)
    assert received == b""


async def test_an_idle_keep_alive_connection_is_closed_after_its_response(world: World) -> None:
    async with connection(world) as (reader, writer):
        writer.write(request_head("GET", "/healthz"))
        await writer.drain()
        status, _, body = await read_response(reader)  # reads on until the server closes
    assert status == 200 and json.loads(body) == {"status": "ok"}


async def test_a_huge_header_is_refused(world: World) -> None:
    async with connection(world) as (reader, writer):
        writer.write(request_head("GET", "/api/v1/nodes", "X-Huge: " + "h" * 100_000))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        status, _, body = await read_response(reader)
    # aiohttp's parser refuses it before any route runs, in plain text.
    assert status == 400 and b"more than 8190 bytes" in body


async def test_too_many_headers_are_refused(world: World) -> None:
    many = [f"X-Many-{i}: {i}" for i in range(200)]
    async with connection(world) as (reader, writer):
        writer.write(request_head("GET", "/api/v1/nodes", *many))
        await writer.drain()
        status, _, body = await read_response(reader)
    assert status == 400 and b"header" in body.lower()


async def test_the_daemon_still_serves_after_all_this(world: World) -> None:
    status, body = await asyncio.to_thread(world.call, "GET", "/api/v1/nodes")
    assert status == 200 and {n["name"] for n in body["nodes"]} == {"acme-1", "globex-1"}
