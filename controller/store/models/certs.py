"""The certificate tables: user-supplied and ACME-issued certificates of an app, and ACME's
own state (the registry's account key, the domains that asked for ACME, the http-01 answers
the frontends publish).

Importing controller.store.models registers them with every other table. Rows go when their app goes
(ON DELETE CASCADE).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from controller.store.models import Base, UTCDateTime, utcnow
from controller.store.secretbox import Sealed


class Certificate(Base):
    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    chain_pem: Mapped[str] = mapped_column(Text)
    key_pem: Mapped[str] = mapped_column(Sealed("certificates.key_pem"))  # sealed at rest
    names: Mapped[list[str]] = mapped_column(JSON)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(16), default="user")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AcmeAccount(Base):
    """The registry's one ACME account key per directory URL (the fleet shares it)."""

    __tablename__ = "acme_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    directory_url: Mapped[str] = mapped_column(String(2000), unique=True)
    key_pem: Mapped[str] = mapped_column(Sealed("acme_accounts.key_pem"))  # sealed at rest
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AcmeDomain(Base):
    """A domain of an app that gets its certificate by ACME, and how the last attempt went."""

    __tablename__ = "acme_domains"

    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    cert_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AcmeChallenge(Base):
    """An http-01 answer published to every frontend while its order is being validated."""

    __tablename__ = "acme_challenges"

    token: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_authorization: Mapped[str] = mapped_column(String(200))
    domain: Mapped[str] = mapped_column(String(253))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
