"""The registry's server process: connection limits, TLS, graceful shutdown."""
