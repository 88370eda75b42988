"""The certificates table: user-supplied (and later ACME-issued) certificates of an app.

Its own module so the shared `models.py` stays untouched; `db.py` imports it so that
`create_all` creates the table. Rows go when their app goes (ON DELETE CASCADE).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from controller.models import Base, UTCDateTime, utcnow


class Certificate(Base):
    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    chain_pem: Mapped[str] = mapped_column(Text)
    key_pem: Mapped[str] = mapped_column(Text)
    names: Mapped[list[str]] = mapped_column(JSON)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(16), default="user")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
