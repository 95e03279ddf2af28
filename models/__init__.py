"""The messages of the wire contract (CONTRACT sections 3 and 5) as pydantic models."""
