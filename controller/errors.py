"""The registry's one exception hierarchy; `app.py` translates it to HTTP in one place."""

from __future__ import annotations


class RegistryError(Exception):
    status_code = 500


class Invalid(RegistryError):
    status_code = 422


class Unauthorized(RegistryError):
    status_code = 401


class Forbidden(RegistryError):
    status_code = 403


class NotFound(RegistryError):
    status_code = 404


class Conflict(RegistryError):
    status_code = 409


class TooLarge(RegistryError):
    status_code = 413


class InsufficientStorage(RegistryError):
    """The filesystem under the artifact store or the database is full (HTTP 507)."""

    status_code = 507


class StorageFailed(RegistryError):
    """The artifact store could not write for another reason (permissions, I/O error)."""

    status_code = 500
