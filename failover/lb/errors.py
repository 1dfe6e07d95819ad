"""Load-balancer errors: one subclass per kind of trouble, each also a built-in exception."""

from __future__ import annotations

from nodevigil.errors import LoadBalancerError


class LoadBalancerUnavailable(LoadBalancerError, ConnectionError):
    """The load balancer could not be reached (socket missing, refused, timed out): transient."""


class LoadBalancerTimeout(LoadBalancerUnavailable, TimeoutError):
    """The load balancer did not answer within the adapter's timeout: transient."""


class LoadBalancerNotFound(LoadBalancerError, LookupError):
    """The backend, server or zone named in a call does not exist in the load balancer."""

    def __init__(self, message: str, *, backend: str = "", server: str = "") -> None:
        super().__init__(message)
        self.backend = backend
        self.server = server


class LoadBalancerRejected(LoadBalancerError):
    """The load balancer answered but refused the change (DNS rcode, HTTP status, CLI text)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        # The rcode name (REFUSED, NOTAUTH, BADSIG) or HTTP status, for events and metrics.
        self.code = code


class LoadBalancerInvalid(LoadBalancerError, ValueError):
    """A call's argument cannot be sent at all (a name with spaces, an address that is not IP)."""
