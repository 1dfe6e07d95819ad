"""Target nodes for the packet-loss tests: HTTP 200 after a random delay, on given addresses.

Run inside a namespace: ``ip netns exec NS python -m tests.faults.jitter_server --port P
--max-delay 0.2 ADDRESS...``. Prints ``ready`` once every address listens; SIGTERM or
SIGKILL ends it. The delay (uniform in 0..max-delay) stands in for a node's latency jitter,
since the kernel has no netem to add it on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal

from aiohttp import web


async def serve(addresses: list[str], port: int, max_delay: float) -> None:
    """Answer every request with 200 after a random delay until told to stop."""

    async def answer(_: web.Request) -> web.Response:
        await asyncio.sleep(random.uniform(0.0, max_delay))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.05)
    await runner.setup()
    for address in addresses:
        await web.TCPSite(runner, address, port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-delay", type=float, default=0.2)
    parser.add_argument("addresses", nargs="+")
    args = parser.parse_args()
    asyncio.run(serve(args.addresses, args.port, args.max_delay))


if __name__ == "__main__":
    main()
