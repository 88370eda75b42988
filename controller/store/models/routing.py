"""Per-app routing options: one JSON row per app (controller/core/route_options.py reads it)."""

from __future__ import annotations

from sqlalchemy import JSON, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from controller.store.models import Base


class AppRouting(Base):
    __tablename__ = "app_routing"

    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    options: Mapped[dict] = mapped_column(JSON, default=dict)
