"""Shared test helpers: fakes, corpora, real-server fixtures."""
