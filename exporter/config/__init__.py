"""The configuration file: its models (model), the strict YAML reader (yamlfile), loading with secrets
(loader, secrets), one-line errors (errors), sharding (shard), durations like ``30s`` (durations) and
the JSON Schema generated from the models (:mod:`exporter.config.schema`, imported on demand).
"""

from exporter.config.durations import format_duration, parse_duration
from exporter.config.errors import ConfigError, validation_problems
from exporter.config.loader import LoadedConfig, load_config, load_endpoint_secrets, parse_config
from exporter.config.model import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_MODULES,
    Config,
    DomainCheckConfig,
    EndpointConfig,
    Model,
    ModuleConfig,
    ProbeEndpointConfig,
    ReceiveConfig,
    ReportsConfig,
    ReportsMailboxConfig,
    RoundTripConfig,
    TLSCheckConfig,
    TLSConfig,
    config_model,
    default_port,
    sections,
    state_dir,
)
from exporter.config.shard import in_shard, parse_shard
from exporter.config.yamlfile import MAX_CONFIG_BYTES, load_yaml, read_text_capped

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_MODULES",
    "MAX_CONFIG_BYTES",
    "Config",
    "ConfigError",
    "DomainCheckConfig",
    "EndpointConfig",
    "LoadedConfig",
    "Model",
    "ModuleConfig",
    "ProbeEndpointConfig",
    "ReceiveConfig",
    "ReportsConfig",
    "ReportsMailboxConfig",
    "RoundTripConfig",
    "TLSCheckConfig",
    "TLSConfig",
    "config_model",
    "default_port",
    "format_duration",
    "in_shard",
    "load_config",
    "load_endpoint_secrets",
    "load_yaml",
    "parse_config",
    "parse_duration",
    "parse_shard",
    "read_text_capped",
    "sections",
    "state_dir",
    "validation_problems",
]
