"""Settings built once from the environment (CONTRACT section 2)."""

from .settings import ConfigError, ProcessingGuarantee, Settings, load_settings, parse_duration

__all__ = ["ConfigError", "ProcessingGuarantee", "Settings", "load_settings", "parse_duration"]
