"""The http-01 answers in the routing table: every frontend serves them from its challenge map.

Its own small module because the routing table (views.py) needs it and must not import the
issuing machinery (acme.py imports the routing side in turn).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import wire
from controller.store.models.certs import AcmeChallenge


def route_challenges(session: Session) -> list[wire.RouteChallenge]:
    """The http-01 answers every frontend serves right now."""
    rows = session.execute(select(AcmeChallenge).order_by(AcmeChallenge.token)).scalars()
    return [wire.RouteChallenge(token=r.token, key_authorization=r.key_authorization) for r in rows]
