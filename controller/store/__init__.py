"""Where the registry keeps state: tables, schema migrations, artifacts, backups, secrets."""
