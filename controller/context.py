"""What every route needs, built once by `create_app` and handed out as a dependency."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from controller.artifacts import ArtifactStore
from controller.db import Database
from controller.settings import RegistrySettings
from controller.watch import Notifier


@dataclass
class Context:
    settings: RegistrySettings
    db: Database
    notifier: Notifier
    artifacts: ArtifactStore


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx
