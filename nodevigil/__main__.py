"""The ``nodevigil`` command (and ``python -m nodevigil``): signals are caught first.

Only the standard library and ``nodevigil.core.signals`` are imported before the handlers are in
place; the command line, the configuration and the daemon come after.
"""

from __future__ import annotations

import sys

from nodevigil.core.signals import EarlySignals


def main() -> int:
    """Entry point of the console script."""
    early = EarlySignals()
    from nodevigil.app.cli import main as cli_main

    return cli_main(early=early)


if __name__ == "__main__":
    sys.exit(main())
