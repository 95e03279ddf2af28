"""meterwatch: usage metering and alerting on Kafka streams."""

__version__ = "0.1.0"
