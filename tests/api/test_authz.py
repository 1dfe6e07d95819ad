"""Who may call what: every /api/ route, taken from the daemon's router, with every kind of
caller. A route added later is in the matrix without anyone listing it here.

The world's data belongs to customer ``acme`` (service ``acme-shop``, node ``acme-1``...);
the path parameters are filled with acme's real names and ids, so a route that forgets to
scope by customer would hand them to ``globex``'s token.
"""

from __future__ import annotations

import base64
import hmac
import re
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from nodevigil.app.api.app import PUBLIC_API_PATHS
from nodevigil.app.api.auth import TokenBook, token_digest
from nodevigil.app.api.openapi import query_names
from nodevigil.core.config import load_config
from nodevigil.core.config.schema import ApiToken
from nodevigil.core.errors import ConfigError
from tests.api.world import ADMIN, GLOBEX, READER, World

Route = tuple[str, str]  # method, path pattern


def api_routes(world: World) -> list[Route]:
    """Every /api/ route of the running daemon that needs a token (HEAD is GET's twin)."""
    assert world.daemon is not None and world.daemon.api_app is not None
    routes = {
        (r.method, r.resource.canonical)
        for r in world.daemon.api_app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    found = sorted((m, p) for m, p in routes if p.startswith("/api/") and p not in PUBLIC_API_PATHS)
    assert len(found) > 25
    return found


def acme_samples(world: World) -> dict[str, str]:
    """Real names and ids of acme's things, keyed by the path before the parameter."""
    _, incidents = world.call("GET", "/api/v1/incidents?service=acme-shop")
    _, ledger = world.call("GET", "/api/v1/sla/ledger?service=acme-shop")
    _, windows = world.call("GET", "/api/v1/maintenance")
    _, dead = world.call("GET", "/api/v1/notifications?state=dead")
    window = next(w for w in windows["maintenance"] if w["services"] == ["acme-shop"])
    return {
        "/api/v1/nodes/": "acme-1",
        "/api/v1/sites/": "acme-site",
        "/api/v1/notifiers/": "acme-hook",
        "/api/v1/incidents/": str(incidents["incidents"][0]["id"]),
        "/api/v1/sla/intervals/": str(ledger["intervals"][0]["id"]),
        "/api/v1/maintenance/": str(window["id"]),
        "/api/v1/notifications/": dead["notifications"][0]["id"],
    }


def concrete(path: str, samples: dict[str, str]) -> str:
    """``path`` with each ``{param}`` replaced by the sample for the path before it."""

    def fill(match: re.Match[str]) -> str:
        prefix = path[: match.start()]
        assert prefix in samples, f"add a sample value for {prefix}{{...}} to acme_samples()"
        return samples[prefix]

    return re.sub(r"\{[^}]+\}", fill, path)


def probes(world: World) -> list[tuple[str, str]]:
    """(method, concrete URL path) for every route, plus each read asking for acme by name."""
    samples = acme_samples(world)
    out = []
    for method, pattern in api_routes(world):
        path = concrete(pattern, samples)
        out.append((method, path))
        takes = query_names(method, pattern) or frozenset()
        for key, value in (("customer", "acme"), ("service", "acme-shop"), ("subject", "acme-1")):
            if key in takes:
                out.append((method, f"{path}?{key}={value}"))
    return out


def send(world: World, method: str, path: str, authorization: str | None) -> tuple[int, Any]:
    headers = {} if authorization is None else {"Authorization": authorization}
    # A plausible body for the routes that take one: refusals must not depend on it.
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return world.call(method, path, token=None, headers=headers, **body)


BAD_AUTHORIZATION = {
    "no header": None,
    "wrong token": "Bearer not-a-configured-token",
    "another scheme": "Basic " + base64.b64encode(f"ops:{ADMIN}".encode()).decode(),
    "scheme only": "Bearer",
    "blank token": "Bearer    ",
    "token without scheme": ADMIN,
    "token glued to scheme": f"Bearer{ADMIN}",
    "token with a suffix": f"Bearer {ADMIN} {ADMIN}",
    "digest instead of token": f"Bearer {token_digest(ADMIN)}",
}


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
def test_every_route_refuses_a_missing_or_bad_token(world: World, case: str) -> None:
    authorization = BAD_AUTHORIZATION[case]
    for method, path in probes(world):
        status, body = send(world, method, path, authorization)
        assert status == 401, (case, method, path, status, body)
        assert isinstance(body, dict) and isinstance(body["error"], str), (method, path, body)
        assert "acme" not in str(body), (method, path, body)


def test_read_token_reads_everything_and_changes_nothing(world: World) -> None:
    for method, path in probes(world):
        status, body = send(world, method, path, f"Bearer {READER}")
        if method == "GET":
            assert status == 200, (method, path, status, body)
        else:
            assert status == 403, (method, path, status, body)
            assert body == {"error": "this route needs an admin token"}


def test_another_customers_token_gets_nothing_of_acme(world: World) -> None:
    leaked_to_admin = 0
    for method, path in probes(world):
        status, body = send(world, method, path, f"Bearer {GLOBEX}")
        assert status in (200, 403, 404), (method, path, status, body)
        assert "acme" not in str(body).lower(), (method, path, status, body)
        if method != "GET":
            assert status == 403, (method, path, status, body)
        if method == "GET":
            _, seen = send(world, method, path, f"Bearer {ADMIN}")
            leaked_to_admin += "acme" in str(seen)
    # Not vacuous: the same requests show acme's data to an operator on most reads.
    assert leaked_to_admin >= 12


def test_tokens_are_only_digests_and_compared_in_constant_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError):
        ApiToken.model_validate({"name": "ops", "role": "admin", "token": ADMIN})
    with pytest.raises(ValidationError):
        ApiToken.model_validate({"name": "ops", "role": "admin", "sha256": ADMIN})
    path = world.config.parent / "clear.yaml"
    data = yaml.safe_load(world.config.read_text())
    data["api"]["tokens"][0] = {"name": "ops", "role": "admin", "token": ADMIN}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"api\.tokens\[0\]\.token: unknown key"):
        load_config(path)

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("nodevigil.app.api.auth.hmac.compare_digest", spy)
    assert world.daemon is not None
    book = TokenBook(world.daemon.config.api.tokens)
    for presented, name in ((ADMIN, "ops"), ("nobody", None)):
        calls.clear()
        found = book.identify(presented)
        assert (found.name if found else None) == name
        # Every configured digest is compared, whether or not an earlier one matched.
        assert len(calls) == len(world.daemon.config.api.tokens)
        assert all(a == token_digest(presented).encode() for a, _ in calls)
