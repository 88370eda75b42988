"""The environment a release's processes get from the registry, on top of the agent's own.

Pure: rows and settings in, a dict out. Both the desired state a machine host watches
(controller/api/views.py) and the release phase (controller/core/release_phase.py) use it, so
a release-phase command sees exactly what the release's processes will see.
"""

from __future__ import annotations

from controller.core.services import dependency_env
from controller.settings import RegistrySettings
from controller.store.models import App, Host, Release


def app_identity(app: App) -> str:
    """Which app this is, across deletes: the row id plus its creation time (SQLite may
    give a new app the id of a deleted one), so a new app of the same name never gets the
    data folder of a deleted one (agent/machine/storage/datadir.py)."""
    return f"{app.id}-{int(app.created_at.timestamp() * 1_000_000)}"


def release_env(
    release: Release, host: Host, ports: dict[str, int | None], settings: RegistrySettings
) -> dict[str, str]:
    """What a process of `release` on `host` gets on top of the agent's own variables: the
    <NAME>_URL of its dependencies, its config snapshot (wins), then PAAS_*."""
    app = release.app
    env = dependency_env(app, ports)  # <NAME>_URL (controller/core/services.py); config wins
    env.update(release.config)
    env.update(
        PAAS_APP=app.name,
        PAAS_APP_ID=app_identity(app),  # the agent keys the app's data folder by it
        PAAS_RELEASE=str(release.version),
        PAAS_HOST=host.name,
        PAAS_URL=settings.app_url(app.name),
    )
    return env
