"""One module per resource of the registry API (docs/api.md)."""
