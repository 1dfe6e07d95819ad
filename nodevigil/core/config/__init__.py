"""Configuration: one YAML file parsed once into frozen, typed objects."""

from nodevigil.core.config.load import load_config, parse_config, read_secret
from nodevigil.core.config.schema import (
    Config,
    DnsProbe,
    HttpProbe,
    IcmpProbe,
    MqttProbe,
    Node,
    Probe,
    Service,
    Site,
    TcpProbe,
    TlsProbe,
)

__all__ = [
    "Config",
    "DnsProbe",
    "HttpProbe",
    "IcmpProbe",
    "MqttProbe",
    "Node",
    "Probe",
    "Service",
    "Site",
    "TcpProbe",
    "TlsProbe",
    "load_config",
    "parse_config",
    "read_secret",
]
