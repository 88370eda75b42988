"""Keeping agents in step: blocking watches, shared answers, leadership, heartbeats."""
