"""Certificates from an ACME CA (http-01), ordered and renewed by the registry."""
