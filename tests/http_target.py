"""A healthy HTTP node in a process of its own, answering 200 and closing every connection.

In a process of its own because the tests that use it make their own process busy (opening
thousands of connections) or short of descriptors, which must not slow or stop the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

TARGET = """
import asyncio, sys
OK = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
async def serve(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(OK)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def healthy_target() -> AsyncIterator[int]:
    """An HTTP node that answers 200 and closes: every probe opens a new connection."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TARGET, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            port = int(await proc.stdout.readline())
        yield port
    finally:
        proc.kill()
        await proc.wait()
