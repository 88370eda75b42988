"""Strict patterns for every value that can reach a proxy config, a path or an argv.

Names are the security boundary of the whole system: the registry rejects anything that does
not match here (it never "sanitizes"), and the agents check again before rendering, so a
value that reaches nginx or HAProxy is always one of these shapes.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, Field

DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"

APP_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
HOST_NAME_RE = APP_NAME_RE
DOMAIN_RE = re.compile(rf"^(?:\*\.)?(?:{DNS_LABEL}\.)*{DNS_LABEL}$")
ENV_KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,254}$")
LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_.-]{0,61}[a-z0-9])?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
HEALTH_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/%-]{0,200}$")
PROCESS_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
# ACME http-01 (RFC 8555 8.3): a token and its key authorization (token "." thumbprint) are
# base64url; they go into the frontends' challenge map, so nothing else may pass.
ACME_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
ACME_KEY_AUTH_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}\.[A-Za-z0-9_-]{43}$")


class InvalidName(ValueError):
    """A value does not match its strict pattern; the message says which rule it broke."""


def _check(pattern: re.Pattern[str], value: str, what: str, rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidName(f"invalid {what} {value!r}: {rule}")
    return value


def check_app_name(value: str) -> str:
    return _check(
        APP_NAME_RE,
        value,
        "app name",
        "use 1-63 lowercase letters, digits and '-', starting with a letter"
        " and not ending with '-'",
    )


def check_host_name(value: str) -> str:
    return _check(
        HOST_NAME_RE,
        value,
        "host name",
        "use 1-63 lowercase letters, digits and '-', starting with a letter",
    )


def check_domain(value: str) -> str:
    _check(
        DOMAIN_RE,
        value,
        "domain",
        "use lowercase DNS labels (letters, digits, '-') separated by '.',"
        " optionally starting with '*.'",
    )
    if len(value) > 253:
        raise InvalidName(f"invalid domain {value!r}: longer than 253 characters")
    return value


def check_env_key(value: str) -> str:
    return _check(
        ENV_KEY_RE,
        value,
        "config key",
        "use uppercase letters, digits and '_', not starting with a digit",
    )


def check_label(value: str) -> str:
    return _check(LABEL_RE, value, "label", "use lowercase letters, digits, '_', '.', '-' (max 63)")


def check_sha256(value: str) -> str:
    return _check(SHA256_RE, value, "sha256", "expected 64 lowercase hex digits")


def check_health_path(value: str) -> str:
    return _check(
        HEALTH_PATH_RE,
        value,
        "health-check path",
        "must start with '/' and use only letters, digits and . _ ~ / % -",
    )


def check_process_type(value: str) -> str:
    return _check(
        PROCESS_TYPE_RE,
        value,
        "process type",
        "use lowercase letters, digits, '_' and '-', starting with a letter",
    )


def check_acme_token(value: str) -> str:
    return _check(ACME_TOKEN_RE, value, "ACME token", "expected 16-128 base64url characters")


def check_acme_key_authorization(value: str) -> str:
    return _check(
        ACME_KEY_AUTH_RE, value, "ACME key authorization", "expected <token>.<thumbprint>"
    )


def check_address(value: str) -> str:
    """An IP literal or a DNS name: the only shapes a server line may carry."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not isinstance(value, str) or "*" in value:
        raise InvalidName(f"invalid address {value!r}: expected an IP address or a DNS name")
    try:
        return check_domain(value)
    except InvalidName:
        raise InvalidName(
            f"invalid address {value!r}: expected an IP address or a DNS name"
        ) from None


def check_env_value(value: str) -> str:
    """Config values go only into a process environment, never into a config file."""
    if "\x00" in value:
        raise InvalidName("invalid config value: it contains a NUL byte")
    if len(value.encode()) > 65536:
        raise InvalidName("invalid config value: longer than 64 KiB")
    return value


AppName = Annotated[str, AfterValidator(check_app_name)]
HostName = Annotated[str, AfterValidator(check_host_name)]
Domain = Annotated[str, AfterValidator(check_domain)]
EnvKey = Annotated[str, AfterValidator(check_env_key)]
EnvValue = Annotated[str, AfterValidator(check_env_value)]
Label = Annotated[str, AfterValidator(check_label)]
Sha256 = Annotated[str, AfterValidator(check_sha256)]
HealthPath = Annotated[str, AfterValidator(check_health_path)]
ProcessType = Annotated[str, AfterValidator(check_process_type)]
Address = Annotated[str, AfterValidator(check_address)]
AcmeToken = Annotated[str, AfterValidator(check_acme_token)]
AcmeKeyAuthorization = Annotated[str, AfterValidator(check_acme_key_authorization)]
Port = Annotated[int, Field(ge=1, le=65535)]


# Token labels (shown in `paas tokens` and the audit log) and `--since 10m` values.
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")
DURATION_RE = re.compile(r"^(\d{1,7})(s|m|h|d)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def check_token_name(value: str) -> str:
    return _check(
        TOKEN_NAME_RE, value, "token name", "letters, digits, _ . @ -; at most 63 characters"
    )


def parse_duration(value: str) -> int:
    """'10m' -> 600 seconds; units s, m, h, d. Anything else is refused."""
    match = DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidName(f"invalid duration {value!r}: a number and s, m, h or d (e.g. 10m)")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
