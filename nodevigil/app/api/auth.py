"""Bearer tokens: stored as sha256 digests, compared in constant time, scoped by role."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from nodevigil.core.config.schema import ApiToken


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's name, role and (for customer tokens) customer id."""

    name: str
    role: str
    customer: str | None = None

    @property
    def is_admin(self) -> bool:
        """May change things (drain, causes, exclusions)."""
        return self.role == "admin"

    @property
    def is_operator(self) -> bool:
        """May read the whole fleet (admin or read)."""
        return self.role in ("admin", "read")


def token_digest(token: str) -> str:
    """The sha256 hex digest stored in the configuration for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenBook:
    """Looks a presented token up among the configured digests."""

    def __init__(self, tokens: list[ApiToken]) -> None:
        self._tokens = list(tokens)

    def identify(self, presented: str) -> Principal | None:
        """The principal for ``presented``, or None; every digest is compared, in constant time."""
        digest = token_digest(presented).encode()
        found: ApiToken | None = None
        for token in self._tokens:
            if hmac.compare_digest(digest, token.sha256.encode()):
                found = token
        if found is None:
            return None
        return Principal(found.name, found.role, found.customer)
