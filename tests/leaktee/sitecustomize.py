"""Tee a Python subprocess's stdout and stderr for the secret-leak audit (tests/leakcheck.py).

The test session puts this directory on its children's ``PYTHONPATH`` with
``NODEVIGIL_TEST_TEE_DIR`` set; Python imports ``sitecustomize`` at start-up, before the child's
own code, so whatever a daemon, agent or CLI started by a test prints or logs is also appended
to ``<dir>/<pid>.txt``. Without the variable it does nothing; it never breaks the child.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any


class _Tee:
    """Writes go to the real stream and to the copy; everything else is the real stream's."""

    def __init__(self, stream: Any, copy: Any) -> None:
        self._stream = stream
        self._copy = copy

    def write(self, text: str) -> int:
        with contextlib.suppress(Exception):
            self._copy.write(text)
        return int(self._stream.write(text))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _install() -> None:
    directory = os.environ.get("NODEVIGIL_TEST_TEE_DIR")
    if not directory or not os.path.isdir(directory):
        return
    copy = open(  # noqa: SIM115 - lives as long as the process
        os.path.join(directory, f"{os.getpid()}.txt"),
        "a",
        encoding="utf-8",
        errors="backslashreplace",
        buffering=1,
    )
    # Which program this is, without its later arguments (a test may pass a secret there).
    copy.write(f"# {' '.join(getattr(sys, 'orig_argv', sys.argv)[:4])}\n")
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None:
            setattr(sys, name, _Tee(stream, copy))


with contextlib.suppress(Exception):
    _install()
