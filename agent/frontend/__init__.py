"""The frontend agent: HAProxy in front of all hosts, TLS, routing by domain."""
