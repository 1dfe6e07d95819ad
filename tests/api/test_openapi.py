"""The OpenAPI document describes exactly the routes the daemon serves, and is public."""

from __future__ import annotations

from aiohttp import web

from nodevigil.app.api.openapi import PATH, document
from tests.api.world import World

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path pattern) of every route the application's router holds, HEAD aside."""
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    heads = {path for method, path in routes if method == "HEAD"}
    # aiohttp adds HEAD to every GET route; a HEAD without its GET would be undocumented.
    assert heads <= {path for method, path in routes if method == "GET"}
    unexpected = {method for method, _ in routes} - METHODS - {"HEAD"}
    assert not unexpected, f"routes with methods the document cannot list: {unexpected}"
    return {(method, path) for method, path in routes if method != "HEAD"}


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method.upper() in METHODS
    }


def test_document_lists_every_route_the_daemon_serves(world: World) -> None:
    assert world.daemon is not None and world.daemon.api_app is not None
    served = served_routes(world.daemon.api_app)
    documented = documented_routes()
    assert served - documented == set(), (
        "routes without a description in nodevigil/app/api/openapi.py"
    )
    assert documented - served == set(), "described routes the daemon does not serve"
    assert len(served) > 30


def test_document_is_served_without_a_token(world: World) -> None:
    status, body = world.call("GET", PATH, token=None)
    assert status == 200
    assert body == document()
    assert body["openapi"].startswith("3.1")


def test_every_protected_route_declares_its_token_and_refusals() -> None:
    doc = document()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a token whose sha256 digest is in api.tokens",
    }
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            role = op["x-nodevigil-role"]
            if role == "public":
                assert op["security"] == [] and "401" not in op["responses"], where
                assert not path.startswith("/api/") or path == PATH, where
                continue
            assert "security" not in op and path.startswith("/api/"), where  # the default
            assert "401" in op["responses"], where
            if method != "get":
                assert role == "admin" and "403" in op["responses"], where
            for code, response in op["responses"].items():
                if code.startswith("4"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, where
