"""Whole systems: several hosts in network namespaces, the host image under systemd,
registry replicas."""
