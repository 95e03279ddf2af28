"""Kafka brokers meterwatch talks to: the embedded one for development, and start-up probes."""

from .embedded import EmbeddedBroker, EmbeddedBrokerError
from .probe import BrokerUnreachable, broker_supports_transactions, wait_for_broker

__all__ = [
    "BrokerUnreachable",
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "broker_supports_transactions",
    "wait_for_broker",
]
