"""The registry's HTTP layer: routes, auth dependencies, views, the status page."""
