"""The web views: the usage API, the usage page, /metrics and /health, and which worker answers."""
