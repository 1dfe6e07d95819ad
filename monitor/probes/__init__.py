"""Probe implementations, one per probe ``type``."""

from __future__ import annotations

from monitor.probes.base import Prober, ProbeResult
from monitor.probes.httpclient import ProbeSession
from nodevigil.core.config import DnsProbe, HttpProbe, IcmpProbe, TcpProbe, TlsProbe

__all__ = ["ProbeResult", "Prober", "build_prober"]


def build_prober(
    spec: HttpProbe | TcpProbe | TlsProbe | DnsProbe | IcmpProbe, session: ProbeSession
) -> Prober:
    """The prober for a network probe spec (mqtt probes are built by the monitor)."""
    from monitor.probes.http import HttpProber
    from monitor.probes.net import DnsProber, IcmpProber, TcpProber, TlsProber

    match spec:
        case HttpProbe():
            return HttpProber(spec, session)
        case TcpProbe():
            return TcpProber(spec)
        case TlsProbe():
            return TlsProber(spec)
        case DnsProbe():
            return DnsProber(spec)
        case IcmpProbe():
            return IcmpProber(spec)
