"""Real nginx, HAProxy, PostgreSQL, registry and agent processes, one component at a time."""
