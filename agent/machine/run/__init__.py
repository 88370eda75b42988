"""Running app processes: supervision, uids, cgroups, ports, logs, one-off runs."""
