"""Artifacts kept in the database (the PostgreSQL backend): every replica reads the same bytes.

An artifact is one `artifacts` row plus its body cut into 1 MiB `artifact_chunks`, written in one
transaction after the upload hashed right, so a partial upload is never visible. The embedded
SQLite registry keeps artifacts as files instead (controller/store/artifacts.py); these tables stay
empty there.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from controller.store.models import Base, UTCDateTime, utcnow


class StoredArtifact(Base):
    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ArtifactChunk(Base):
    __tablename__ = "artifact_chunks"

    sha256: Mapped[str] = mapped_column(
        ForeignKey("artifacts.sha256", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
