"""The agents, the ingest service and the per-workspace and per-contract steps they run."""
