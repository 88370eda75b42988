"""The agents' link to the registry: typed client, watches, reports, the saved state."""
