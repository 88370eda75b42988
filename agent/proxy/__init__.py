"""Proxy configuration shared by both agents: pure rendering and the validate-swap-reload step."""
