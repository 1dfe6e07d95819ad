"""The secret-leak audit's machinery: which secrets the suite uses, and everything it produced.

Secrets are learnt where they enter nodevigil, so a new test cannot forget to declare one:

- spies on the functions every secret passes through: ``read_secret`` (secret_file and
  secret_env: TSIG keys, PowerDNS API keys, MQTT and SMTP passwords, webhook secrets),
  ``token_digest`` (API tokens, both configured and presented), ``parse_secret`` (webhook
  secrets), ``dns.tsig.Key`` (every TSIG key), ``aiomqtt.Client`` and ``aiosmtplib.SMTP``
  (passwords), and the PowerDNS adapter (its API key);
- the inputs the tests wrote for daemons they ran as subprocesses: every file named by a
  ``secret_file`` in a YAML configuration, and every ``secret "...";`` in a BIND key or config;
- ``register(name, value)`` for anything else.

What the suite produced is teed under ``<basetemp>/leak-audit/``: every log record of the test
process (message and traceback, all levels), the bodies and headers of every HTTP response read
from a loopback server with aiohttp, and of every response read whole through requests (the API
tests) or urllib, every request body an in-process server read, every MQTT payload and
mail handed to a broker or SMTP server, and the stdout and stderr of every Python subprocess
(``tests/leaktee/sitecustomize.py``, put on the children's ``PYTHONPATH``). The audit scans
those and every other file under the basetemp (state databases with their outbox bodies,
daemon logs, server logs) byte for byte, and SQLite databases also row by row.

A secret may appear only where it is given as input: as the whole content of a file (a
secret_file, a key file, a token file), in a BIND ``secret "...";`` statement, or in a nodevigil
configuration file (YAML whose top-level keys are the configuration's; the loader refuses
secrets written there: tokens are digests, URLs carry no password, secrets are references, so
such a file is a test of that refusal). Anywhere else it is a leak. A token's sha256 digest is
not a secret, even when a test presents one as a token.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.client
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nodevigil.core.config.schema import Config
from nodevigil.core.config.yamlfile import YamlProblem, read_yaml

MIN_LENGTH = 8  # shorter test values ("x", "nope") would match by chance
TEE_ENV = "NODEVIGIL_TEST_TEE_DIR"
LEAKTEE = Path(__file__).resolve().parent / "leaktee"
_BIND_SECRET = re.compile(rb'secret\s+"([^"]+)"\s*;')
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
CONFIG_KEYS = frozenset(Config.model_fields)


@dataclass(frozen=True)
class Leak:
    """One secret found where it must not be."""

    file: Path
    secret: str  # the secret's name, never its value
    where: str  # "bytes at offset N" or "table T"

    def __str__(self) -> str:
        return f"{self.file}: {self.secret} ({self.where})"


class Registry:
    """The secrets to look for, by value, each with a name that says where it came from."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, name: str, value: str | bytes | None) -> None:
        """Remember ``value`` (a str, or bytes that are text) as the secret called ``name``."""
        if isinstance(value, bytes):
            raw = value
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                value = base64.b64encode(raw).decode()
        if value is None or len(value.strip()) < MIN_LENGTH:
            return
        with self._lock:
            self._names.setdefault(value.strip(), name)

    def __len__(self) -> int:
        return len(self._names)

    def needles(self) -> dict[bytes, str]:
        """Every form a secret can take in output (as written, URL-quoted, a whsec_ key's body),
        each with the secret's name."""
        out: dict[bytes, str] = {}
        with self._lock:
            items = list(self._names.items())
        digests = {hashlib.sha256(value.encode()).hexdigest() for value, _ in items}
        for value, name in items:
            if value in digests:
                continue  # a token's sha256 (presented to prove it is refused): not a secret
            forms = {value, quote(value, safe="")}
            if value.startswith("whsec_") and len(value) - 6 >= MIN_LENGTH:
                forms.add(value[len("whsec_") :])
            for form in forms:
                out.setdefault(form.encode(), name)
        return out


SECRETS = Registry()


def register(name: str, value: str | bytes | None) -> None:
    """Declare a secret the spies cannot see (it never passes through nodevigil)."""
    SECRETS.add(name, value)


# --- learning secrets where they enter nodevigil ----------------------------------------------


def _rebind(replacements: dict[int, tuple[Any, Any]]) -> None:
    """Replace every module-level binding of each original object by its stand-in."""
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, obj in list(namespace.items()):
            pair = replacements.get(id(obj))
            if pair is not None and pair[0] is obj:
                namespace[attr] = pair[1]


def _spy_function(original: Callable[..., Any], learn: Callable[..., None]) -> Callable[..., Any]:
    @functools.wraps(original)
    def spy(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        learn(result, *args, **kwargs)
        return result

    return spy


def _spy_init(cls: type, learn: Callable[..., None]) -> Callable[[], None]:
    """Wrap ``cls.__init__`` so ``learn(*args, **kwargs)`` sees every construction."""
    original = cls.__dict__["__init__"]

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        learn(*args, **kwargs)
        original(self, *args, **kwargs)

    cls.__init__ = init  # type: ignore[misc]
    return lambda: setattr(cls, "__init__", original)


def _spy_method(cls: type, name: str, wrap: Callable[[Any], Any]) -> Callable[[], None]:
    original = cls.__dict__[name]
    setattr(cls, name, wrap(original))
    return lambda: setattr(cls, name, original)


class Spies:
    """Installed for the session: learn secrets into ``registry``, tee output into ``tee``."""

    def __init__(self, registry: Registry, tee: Tee) -> None:
        self.registry = registry
        self.tee = tee
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        """Install every spy (idempotent only through ``uninstall``)."""
        self._functions()
        self._classes()
        self._outputs()

    def uninstall(self) -> None:
        """Put everything back as it was."""
        while self._undo:
            self._undo.pop()()

    def _functions(self) -> None:
        from failover.notify import webhook
        from nodevigil.app.api import auth
        from nodevigil.core.config import load

        add = self.registry.add

        def secret_read(value: str, ref: Any, base_dir: Any = None) -> None:
            add(f"secret {ref.secret_file or ref.secret_env}", value)

        def token_hashed(_: str, token: str) -> None:
            add("API token", token)

        def webhook_parsed(_: bytes, text: str, where: str = "secret") -> None:
            add(f"webhook secret ({where})", text)

        def learn_before(original: Callable[..., Any], learn: Callable[..., None]) -> Any:
            @functools.wraps(original)
            def spy(*args: Any, **kwargs: Any) -> Any:
                learn(None, *args, **kwargs)  # also when the call refuses the value
                return original(*args, **kwargs)

            return spy

        pairs = [
            (load.read_secret, _spy_function(load.read_secret, secret_read)),
            (auth.token_digest, _spy_function(auth.token_digest, token_hashed)),
            (webhook.parse_secret, learn_before(webhook.parse_secret, webhook_parsed)),
        ]
        _rebind({id(original): (original, spy) for original, spy in pairs})
        self._undo.append(lambda: _rebind({id(spy): (spy, original) for original, spy in pairs}))

    def _classes(self) -> None:
        import aiomqtt
        import aiosmtplib
        import dns.tsig

        from failover.lb.powerdns import PowerDnsLoadBalancer

        add = self.registry.add

        def tsig(name: Any = None, secret: Any = None, *_: Any, **kw: Any) -> None:
            secret = kw.get("secret", secret)
            if isinstance(secret, bytes):  # the key itself: text shows it in base64
                secret = base64.b64encode(secret).decode()
            add(f"TSIG key {name}", secret)

        self._undo.append(_spy_init(dns.tsig.Key, tsig))
        self._undo.append(
            _spy_init(aiomqtt.Client, lambda *a, **kw: add("MQTT password", kw.get("password")))
        )
        self._undo.append(
            _spy_init(aiosmtplib.SMTP, lambda *a, **kw: add("SMTP password", kw.get("password")))
        )
        self._undo.append(
            _spy_init(
                PowerDnsLoadBalancer, lambda *a, **kw: add("PowerDNS API key", kw.get("api_key"))
            )
        )

    def _outputs(self) -> None:
        import aiohttp
        import aiomqtt
        import aiosmtplib
        from aiohttp import web_request

        tee = self.tee

        def client_read(original: Any) -> Any:
            @functools.wraps(original)
            async def read(response: aiohttp.ClientResponse) -> bytes:
                body: bytes = await original(response)
                if response.url.host in _LOOPBACK and not getattr(response, "_nv_teed", False):
                    response._nv_teed = True  # type: ignore[attr-defined]
                    head = f"{response.method} {response.url} -> {response.status}\n"
                    headers = "".join(f"{k}: {v}\n" for k, v in response.headers.items())
                    tee.write("http", (head + headers).encode() + body + b"\n")
                return body

            return read

        def urllib_read(original: Any) -> Any:
            @functools.wraps(original)
            def read(response: http.client.HTTPResponse, amt: int | None = None) -> bytes:
                body: bytes = original(response, amt)
                if amt is None:  # a whole body (urllib); requests reads in pieces, see below
                    head = f"{response.status} {response.geturl() or ''}\n{response.headers}"
                    tee.write("http", head.encode() + body)
                return body

            return read

        def requests_content(original: property) -> property:
            def content(response: Any) -> Any:
                body = original.fget(response) if original.fget else None
                if isinstance(body, bytes) and not getattr(response, "_nv_teed", False):
                    response._nv_teed = True
                    head = f"{response.request.method} {response.url} -> {response.status_code}"
                    headers = "".join(f"{k}: {v}\n" for k, v in response.headers.items())
                    tee.write("http", f"{head}\n{headers}".encode() + body)
                return body

            return property(content)

        def server_read(original: Any) -> Any:
            @functools.wraps(original)
            async def read(request: web_request.BaseRequest) -> bytes:
                body: bytes = await original(request)
                if not getattr(request, "_nv_teed", False):
                    request._nv_teed = True  # type: ignore[attr-defined]
                    tee.write("http", f"{request.method} {request.path} <-\n".encode() + body)
                return body

            return read

        def publish(original: Any) -> Any:
            @functools.wraps(original)
            async def spy(client: Any, topic: str, payload: Any = None, *a: Any, **kw: Any) -> Any:
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                tee.write("mqtt", f"{topic} ".encode() + data)
                return await original(client, topic, payload, *a, **kw)

            return spy

        def sendmail(original: Any) -> Any:
            @functools.wraps(original)
            async def spy(
                client: Any, sender: str, to: Any, message: Any, *a: Any, **kw: Any
            ) -> Any:
                data = message if isinstance(message, bytes) else str(message).encode()
                tee.write("mail", data)
                return await original(client, sender, to, message, *a, **kw)

            return spy

        self._undo.append(_spy_method(aiohttp.ClientResponse, "read", client_read))
        self._undo.append(_spy_method(http.client.HTTPResponse, "read", urllib_read))
        with contextlib.suppress(ImportError):  # the API tests' schemathesis brings requests
            import requests

            self._undo.append(_spy_method(requests.Response, "content", requests_content))
        self._undo.append(_spy_method(web_request.BaseRequest, "read", server_read))
        self._undo.append(_spy_method(aiomqtt.Client, "publish", publish))
        self._undo.append(_spy_method(aiosmtplib.SMTP, "sendmail", sendmail))


# --- teeing what the suite produced -----------------------------------------------------------


class Tee:
    """Append-only copies of the test process's output, one file per kind, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.children = directory / "children"
        self.children.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}
        self._lock = threading.Lock()

    def write(self, kind: str, data: bytes) -> None:
        """Append one entry (a log record, an HTTP body, ...) to the file of its kind."""
        with self._lock:
            file = self._files.get(kind)
            if file is None:
                file = self._files[kind] = (self.directory / f"{kind}.tee").open("ab")
            file.write(data + b"\n")

    def flush(self) -> None:
        """Write everything out (before a scan)."""
        with self._lock:
            for file in self._files.values():
                file.flush()

    def close(self) -> None:
        """Close the files."""
        with self._lock:
            for file in self._files.values():
                file.close()
            self._files.clear()

    def child_environment(self) -> dict[str, str]:
        """What Python subprocesses need in their environment to tee their stdout and stderr."""
        path = os.environ.get("PYTHONPATH")
        return {
            TEE_ENV: str(self.children),
            "PYTHONPATH": str(LEAKTEE) + (os.pathsep + path if path else ""),
        }


class TeeHandler(logging.Handler):
    """A logging handler that copies every record, with its traceback, into the tee."""

    def __init__(self, tee: Tee) -> None:
        super().__init__(logging.NOTSET)
        self.tee = tee
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Copy ``record`` (formatted as the daemon's own handler would, plus its traceback)."""
        try:
            self.tee.write("log", self.format(record).encode("utf-8", "backslashreplace"))
        except Exception:
            self.handleError(record)


@dataclass(frozen=True)
class LeakAudit:
    """What the session's audit needs: the secrets learnt, the tee, the directory to scan."""

    root: Path
    registry: Registry
    tee: Tee


# --- the scan ---------------------------------------------------------------------------------


def learn_inputs(root: Path, registry: Registry) -> None:
    """Learn the secrets given as input to daemons the tests ran as subprocesses."""
    for path in _files(root):
        if path.suffix in (".yaml", ".yml"):
            for ref in _secret_files(path):
                target = ref if ref.is_absolute() else path.parent / ref
                with contextlib.suppress(OSError, ValueError):
                    registry.add(f"secret_file {ref.name} of {path.name}", target.read_bytes())
        elif path.suffix in (".key", ".conf"):
            with contextlib.suppress(OSError, ValueError):
                for match in _BIND_SECRET.finditer(path.read_bytes()):
                    registry.add(f"TSIG key in {path.name}", match.group(1))


def _secret_files(config: Path) -> Iterator[Path]:
    try:
        data = read_yaml(config)  # not yaml.safe_load: the fuzz tests leave alias bombs behind
    except (OSError, YamlProblem):
        return
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("secret_file"), str):
                yield Path(node["secret_file"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


@dataclass
class Scanned:
    """How much a scan read."""

    files: int = 0
    bytes: int = 0
    secrets: int = 0  # distinct needles (each secret in each of its forms)
    inputs: int = 0  # configuration files passed over as input


def scan(root: Path, registry: Registry, scanned: Scanned | None = None) -> list[Leak]:
    """Every place under ``root`` where a registered secret appears other than as input."""
    needles = registry.needles()
    scanned = scanned if scanned is not None else Scanned()
    scanned.secrets = len(needles)
    leaks: list[Leak] = []
    for path in _files(root):
        if _is_configuration(path):
            scanned.inputs += 1
            continue  # input: written for nodevigil to read (and refused if it holds a secret)
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned.files += 1
        scanned.bytes += len(data)
        leaks.extend(_scan_bytes(path, data, needles))
        if data.startswith(b"SQLite format 3\x00"):
            leaks.extend(_scan_sqlite(path, needles))
    first = {(leak.file, leak.secret): leak for leak in reversed(leaks)}  # one per file and secret
    return sorted(first.values(), key=str)


def _is_configuration(path: Path) -> bool:
    """A nodevigil configuration file: YAML whose top-level keys are the configuration's."""
    if path.suffix not in (".yaml", ".yml"):
        return False
    try:
        data = read_yaml(path)
    except (OSError, YamlProblem):
        return False
    return isinstance(data, dict) and bool(set(data) & CONFIG_KEYS)


def _scan_bytes(path: Path, data: bytes, needles: dict[bytes, str]) -> Iterator[Leak]:
    if data.strip() in needles:
        return  # the whole file is one secret: a secret_file, a key file, a token file
    allowed = [m.span(1) for m in _BIND_SECRET.finditer(data)]  # BIND: secret "...";
    for needle, name in needles.items():
        start = data.find(needle)
        while start != -1:
            if not any(a <= start < b for a, b in allowed):
                yield Leak(path, name, f"bytes at offset {start}")
                break
            start = data.find(needle, start + 1)


def _scan_sqlite(path: Path, needles: dict[bytes, str]) -> Iterator[Leak]:
    """Row by row: a long value may be split across SQLite pages, or still be in the WAL."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / path.name
        for suffix in ("", "-wal"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                shutil.copyfile(source, f"{copy}{suffix}")
        try:
            connection = sqlite3.connect(copy)
            try:
                lines = list(connection.iterdump())
            finally:
                connection.close()
        except sqlite3.Error:
            return
    for line in lines:
        data = line.encode("utf-8", "backslashreplace")
        for needle, name in needles.items():
            if needle in data:
                table = line.split('"')[1] if line.startswith("INSERT") else "schema"
                yield Leak(path, name, f"table {table}")


# etcd's data directories (member/wal, member/snap): the test clusters hold only the lease keys
# nodevigil writes (host names, epochs), never a secret, and each member preallocates 64 MB
# write-ahead logs that would take the audit past its time limit.
_ETCD_DATA = ("member/wal", "member/snap")


def _files(root: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        if directory.replace(os.sep, "/").endswith(_ETCD_DATA):
            continue
        for name in names:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                yield path
