"""`paas ps:scale APP web=3 worker=2`: the TYPE=N arguments, checked before any request."""

from __future__ import annotations

import click
import pytest

from cli.ps import parse_scale


def test_several_types_at_once() -> None:
    assert parse_scale(("web=3", "worker=2", "clock=0")) == {"web": 3, "worker": 2, "clock": 0}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (("web",), "expected TYPE=N"),
        (("web=-1",), "expected TYPE=N"),
        (("Web=1",), "process type"),
        (("w;rm=1",), "process type"),
        (("release=1",), "release runs once per deploy"),
        (("web=101",), "at most 100"),
        (("web=1", "web=2"), "given twice"),
        ((), "at least one"),
    ],
)
def test_bad_specs_are_refused(specs: tuple[str, ...], message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        parse_scale(specs)
