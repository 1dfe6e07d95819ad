"""Load-balancer errors: one subclass per kind of trouble, each also a built-in exception."""

from __future__ import annotations

from nodevigil.core.authority import Authority, Fenced, refusal
from nodevigil.core.errors import AdapterError
from nodevigil.core.resources import explain, local_errno


class LoadBalancerError(AdapterError):
    """A load balancer refused or could not be reached."""


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


class LoadBalancerFenced(LoadBalancerRejected, Fenced):
    """A command not sent, or refused by the load balancer itself, because this process is no
    longer the leader: a newer epoch holds the DNS fence, or the lease's time left does not
    cover the command. Never retried: the next leader repairs what is left."""

    def __init__(self, message: str, *, code: str = "fenced", epoch: int | None = None) -> None:
        super().__init__(message, code=code)
        self.epoch = epoch  # this process's epoch (None: it holds no lease)


class LoadBalancerInvalid(LoadBalancerError, ValueError):
    """A call's argument cannot be sent at all (a name with spaces, an address that is not IP)."""


class LoadBalancerLocalError(LoadBalancerError):
    """nodevigil itself ran out of a resource (descriptors, buffers, ports) before the call
    reached the load balancer, so it says nothing about the load balancer's state. Not retried
    within the call (the same process would run out again): the controller's cycle reads and
    changes nothing for that load balancer (fail static) and tries again next cycle."""

    def __init__(self, message: str, *, errno_name: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


def check_lease(authority: Authority | None, lb: str, what: str, *, needs: float) -> None:
    """Raise LoadBalancerFenced unless ``authority`` may act for at least ``needs`` seconds
    more: for a load balancer that cannot check an epoch itself, the command must be able to
    finish (its timeout) before this leader's local deadline. Nothing to check without one."""
    if authority is None:
        return
    if not authority.may_act():
        raise LoadBalancerFenced(f"{lb}: not sending {what}: {refusal(authority)}")
    left = authority.remaining()
    if left < needs:
        raise LoadBalancerFenced(
            f"{lb}: not sending {what}: {left:.2f}s left of the leader lease, less than the "
            f"command's timeout {needs:g}s",
            epoch=authority.epoch,
        )


def local_failure(
    exc: BaseException, lb: str, endpoint: str, *, unix: bool = False
) -> LoadBalancerLocalError | None:
    """``exc`` as a LoadBalancerLocalError when it is nodevigil's own exhaustion, else None.

    ``unix``: on a Unix socket EAGAIN means the server's listen backlog is full, which is the
    load balancer being busy, not nodevigil running out.
    """
    name = local_errno(exc)
    if name is None or (unix and name == "EAGAIN"):
        return None
    return LoadBalancerLocalError(
        f"{lb}: {endpoint} not reached: nodevigil is {explain(name)}; the load balancer's "
        "state is unknown and nothing was changed",
        errno_name=name,
    )
