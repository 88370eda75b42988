"""What the registry's parts share: settings, database, notifier, artifact store, answer cache
and leader, built once by `create_app` (controller/api/app.py) and handed to the routes (as a
FastAPI dependency, controller/api/context.py) and to the background loops.

`build_context` picks the parts for the database: SQLite (one process) gets the in-process
notifier, artifacts as files and is always the leader; PostgreSQL (several replicas) gets
LISTEN/NOTIFY, artifacts in the database and an advisory-lock leader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.settings import RegistrySettings
from controller.store import secretbox
from controller.store.artifacts import ArtifactStore
from controller.store.db import Database
from controller.store.db_artifacts import DbArtifactStore
from controller.sync.answer_cache import AnswerCache
from controller.sync.leader import AlwaysLeader, Leader, leader_for
from controller.sync.watch import LocalNotifier, Notifier, PgNotifier


@dataclass
class Context:
    settings: RegistrySettings
    db: Database
    notifier: Notifier
    artifacts: ArtifactStore | DbArtifactStore
    answers: AnswerCache = field(default_factory=AnswerCache)  # watch answers per index
    leader: Leader = field(default_factory=AlwaysLeader)  # runs the scheduling loops?

    def start(self) -> None:
        """Background connections (PostgreSQL: LISTEN and the leader lock)."""
        if isinstance(self.notifier, PgNotifier):
            self.notifier.start()
        self.leader.start()

    def stop(self) -> None:
        self.leader.stop()
        if isinstance(self.notifier, PgNotifier):
            self.notifier.stop()
        self.db.dispose()


def build_context(settings: RegistrySettings) -> Context:
    """Open (and on the embedded default migrate) the database; refuse pending revisions."""
    db = Database(settings.db_url)
    secretbox.attach(db.engine, settings.keyring())  # before migrations: they seal old rows
    try:
        db.prepare(migrate=settings.migrates_on_start)
        secretbox.check_keyring(db.engine)
    except Exception:
        db.dispose()
        raise
    notifier: LocalNotifier = PgNotifier(settings.db_url) if db.is_postgres else LocalNotifier()
    db.on_commit = notifier.notify
    artifacts = artifact_store_for(settings, db)
    artifacts.remove_partial_uploads()  # left by a crash mid-upload; never visible
    return Context(
        settings=settings,
        db=db,
        notifier=notifier,
        artifacts=artifacts,
        leader=leader_for(settings.db_url, postgres=db.is_postgres),
    )


def artifact_store_for(settings: RegistrySettings, db: Database) -> ArtifactStore | DbArtifactStore:
    """Files under the state dir for the one-process SQLite registry; in the database for
    PostgreSQL, where every replica must read every artifact (docs/operations.md)."""
    if db.is_postgres:
        return DbArtifactStore(db, max_bytes=settings.max_artifact_bytes)
    return ArtifactStore(settings.artifacts_dir, max_bytes=settings.max_artifact_bytes)
