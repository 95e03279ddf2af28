"""Where meterwatch's outputs go: Kafka topics and email."""
