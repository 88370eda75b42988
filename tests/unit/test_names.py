"""The strict name patterns of common.names: the security boundary of every config file."""

from __future__ import annotations

import pytest

from common import names
from common.names import InvalidName


@pytest.mark.parametrize("value", ["a", "hello", "my-app-2", "a" * 63])
def test_app_names_accepted(value: str) -> None:
    assert names.check_app_name(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "Hello", "1app", "-app", "app-", "bad;name", "a b", "a" * 64, "app\n", "../etc", "é"],
)
def test_app_names_rejected_with_the_rule(value: str) -> None:
    with pytest.raises(InvalidName, match="invalid app name"):
        names.check_app_name(value)


@pytest.mark.parametrize("value", ["example.com", "a.b.c", "*.example.com", "x-1.io", "localhost"])
def test_domains_accepted(value: str) -> None:
    assert names.check_domain(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "a.com;include",
        "a.com include",
        "A.com",
        "a..com",
        "-a.com",
        "a.com.",
        "*.*.a.com",
        "a.*.com",
        "a.com\n",
        "a.com{",
        "",
        ("a" * 60 + ".") * 5 + "com",
    ],
)
def test_domains_rejected(value: str) -> None:
    with pytest.raises(InvalidName, match="invalid domain"):
        names.check_domain(value)


@pytest.mark.parametrize("value", ["PORT", "DATABASE_URL", "_X", "A1"])
def test_env_keys_accepted(value: str) -> None:
    assert names.check_env_key(value) == value


@pytest.mark.parametrize("value", ["1A", "lower", "A-B", "A B", "A=B", "", "A\n"])
def test_env_keys_rejected(value: str) -> None:
    with pytest.raises(InvalidName, match="invalid config key"):
        names.check_env_key(value)


def test_env_values_refuse_nul_and_huge() -> None:
    assert names.check_env_value("anything; goes $(here)") == "anything; goes $(here)"
    with pytest.raises(InvalidName):
        names.check_env_value("a\x00b")
    with pytest.raises(InvalidName):
        names.check_env_value("x" * 70000)


@pytest.mark.parametrize("value", ["127.0.0.2", "::1", "host.internal", "h1"])
def test_addresses_accepted(value: str) -> None:
    assert names.check_address(value) == value


@pytest.mark.parametrize("value", ["*.a.com", "1.2.3.4:80", "a b", "a;b", "[::1]"])
def test_addresses_rejected(value: str) -> None:
    with pytest.raises(InvalidName, match="invalid address"):
        names.check_address(value)


def test_other_patterns() -> None:
    assert names.check_sha256("a" * 64)
    with pytest.raises(InvalidName):
        names.check_sha256("A" * 64)
    assert names.check_health_path("/health")
    for bad in ["health", "/a b", "/a;b", "/a?x=1", "/a\nb"]:
        with pytest.raises(InvalidName):
            names.check_health_path(bad)
    assert names.check_process_type("web")
    with pytest.raises(InvalidName):
        names.check_process_type("Web")
    assert names.check_label("zone.eu-1")
    with pytest.raises(InvalidName):
        names.check_label("a;b")
