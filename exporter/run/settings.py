"""Config pieces every kind shares, as the probe library's settings: an endpoint and its TLS options.
Each kind's own settings builder lives in its module (``exporter/kinds/``)."""

from __future__ import annotations

from exporter.config import EndpointConfig, TLSConfig, default_port
from probes.wire.net import Endpoint, TLSSettings


def tls_settings(tc: TLSConfig) -> TLSSettings:
    return TLSSettings(
        ca_file=tc.ca_file,
        server_name=tc.server_name,
        insecure_skip_verify=tc.insecure_skip_verify,
        cert_file=tc.cert_file,
        key_file=tc.key_file,
    )


def endpoint_of(ep: EndpointConfig, protocol: str) -> Endpoint:
    return Endpoint(
        host=ep.host,
        port=ep.port or default_port(protocol, ep.tls),
        tls_mode=ep.tls,
        tls=tls_settings(ep.tls_config),
        source_address=ep.source_address,
    )
