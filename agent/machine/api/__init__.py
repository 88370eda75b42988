"""The machine agent's own HTTP API (logs, one-off runs, data), called by the registry."""
