"""`paas-registry backup FILE` / `restore FILE`: one portable format for both backends.

A backup is a sealed (controller/store/backup_seal.py: with the registry's secret key or a
passphrase) `.tar.gz` holding `meta.json` (format, schema revision, row counts), one JSON-lines
file per table and every artifact as `artifacts/<sha256>`. The same file restores into SQLite or
PostgreSQL, so it is also how an embedded registry moves to PostgreSQL. Rows are read in one
transaction (on PostgreSQL a REPEATABLE READ snapshot, on SQLite one WAL read transaction), so a
backup taken while the registry runs is consistent; artifacts are immutable and written after
the rows, so every artifact a backed-up release names is in the file.

Rows are written with their plain values (the sealed columns opened) and sealed again under
the target registry's key when restored, so the file moves between registries whatever their
keys; it is unreadable without the key or passphrase that sealed it, which restore checks over
the whole file before it touches the database.

Restore refuses a database that holds anything unless `--force` (which empties it first); the
registries using it should be stopped while it runs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, delete, func, select, text
from sqlalchemy.types import JSON, DateTime, LargeBinary, TypeDecorator, TypeEngine

from common.names import check_sha256
from controller.store import schema, secretbox
from controller.store.artifacts import ArtifactStore
from controller.store.backup_seal import SealedWriter, SealError, open_sealed
from controller.store.db import Database
from controller.store.db_artifacts import DbArtifactStore

FORMAT = 1
# Artifacts travel as files (whatever the backend keeps them in), not as table rows.
SKIPPED_TABLES = frozenset({"artifacts", "artifact_chunks"})
BATCH = 500

Store = ArtifactStore | DbArtifactStore


class BackupError(RuntimeError):
    """The backup file or the target database is not what restore can use; nothing changed."""


def _tables() -> list[Table]:
    return [t for t in schema.target_metadata().sorted_tables if t.name not in SKIPPED_TABLES]


def _kind(column_type: TypeEngine[Any]) -> str:
    impl = column_type.impl_instance if isinstance(column_type, TypeDecorator) else column_type
    if isinstance(impl, DateTime):
        return "datetime"
    if isinstance(impl, LargeBinary):
        return "bytes"
    if isinstance(impl, JSON):
        return "json"
    return "plain"


def _encode(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "datetime":
        return value.astimezone(UTC).isoformat()
    if kind == "bytes":
        return base64.b64encode(value).decode()
    return value


def _decode(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "datetime":
        return datetime.fromisoformat(value).astimezone(UTC)
    if kind == "bytes":
        return base64.b64decode(value)
    return value


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def backup(
    db: Database, store: Store, dest: Path, *, passphrase: bytes | None = None
) -> dict[str, Any]:
    """Write the whole registry to `dest` (atomically: a temp file renamed at the end), sealed
    with the registry's secret key or with `passphrase`.

    The file is 0600 from its creation on: inside its seal are every token hash, secret and
    TLS key."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            keyring = secretbox.keyring_of(db.engine)
            sealed = SealedWriter(raw, keyring=keyring, passphrase=passphrase)
            with tarfile.open(fileobj=sealed, mode="w:gz") as tar:  # type: ignore[call-overload]
                meta = _write_tar(db, store, tar)
            sealed.close()
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _write_tar(db: Database, store: Store, tar: tarfile.TarFile) -> dict[str, Any]:
    counts: dict[str, int] = {}
    with db.engine.connect() as conn:
        if db.is_postgres:
            conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        revision = sorted(schema.current(conn))
        for table in _tables():
            counts[table.name] = _dump_table(conn, table, tar)
    shas = store.all_sha256()
    for sha in shas:
        _add_artifact(tar, store, sha)
    meta = {
        "format": FORMAT,
        "revision": revision,
        "backend": db.engine.dialect.name,
        "created_at": datetime.now(UTC).isoformat(),
        "rows": counts,
        "artifacts": len(shas),
    }
    _add_bytes(tar, "meta.json", json.dumps(meta, indent=2).encode())
    return meta


def _dump_table(conn: Connection, table: Table, tar: tarfile.TarFile) -> int:
    kinds = {c.name: _kind(c.type) for c in table.columns}
    order = list(table.primary_key.columns) or list(table.columns)
    lines = []
    for row in conn.execute(select(table).order_by(*order)).mappings():
        lines.append(json.dumps({k: _encode(v, kinds[k]) for k, v in row.items()}))
    _add_bytes(tar, f"tables/{table.name}.jsonl", ("\n".join(lines) + "\n").encode())
    return len(lines)


def _add_artifact(tar: tarfile.TarFile, store: Store, sha: str) -> None:
    with tempfile.TemporaryFile() as spool:
        for data in store.chunks(sha):
            spool.write(data)
        size = spool.tell()
        spool.seek(0)
        info = tarfile.TarInfo(f"artifacts/{sha}")
        info.size = size
        info.mode = 0o600
        tar.addfile(info, spool)


def is_empty(db: Database, store: Store) -> bool:
    """No row anywhere (the seeded revision row at 0 aside) and no artifact."""
    with db.engine.connect() as conn:
        for table in _tables():
            if table.name == "revision":
                seq = conn.execute(text("SELECT max(seq) FROM revision")).scalar_one_or_none()
                if seq:
                    return False
            elif conn.execute(select(func.count()).select_from(table)).scalar_one():
                return False
    return not store.all_sha256()


def restore(
    db: Database,
    store: Store,
    source: Path,
    *,
    force: bool = False,
    passphrase: bytes | None = None,
) -> dict[str, Any]:
    """Load `source` into the database (migrated to head first) and the artifact store.

    The whole file is unsealed and checked first: a wrong key or passphrase, or a damaged file,
    is refused before anything is written."""
    try:
        plain = open_sealed(source, keyring=secretbox.keyring_of(db.engine), passphrase=passphrase)
    except OSError as exc:
        raise BackupError(f"{source} cannot be read: {exc}") from exc
    except SealError as exc:
        raise BackupError(str(exc)) from exc
    with plain:
        try:
            tar = tarfile.open(fileobj=plain, mode="r:gz")  # noqa: SIM115  (closed below)
        except (OSError, tarfile.TarError) as exc:
            raise BackupError(f"{source} is not a registry backup: {exc}") from exc
        with tar:
            return _restore_tar(db, store, tar, force=force)


def _restore_tar(
    db: Database, store: Store, tar: tarfile.TarFile, *, force: bool
) -> dict[str, Any]:
    meta = _read_meta(tar)
    schema.upgrade(db.engine)
    if meta["revision"] != sorted(schema.heads()):
        raise BackupError(
            f"the backup has schema revision {meta['revision']}, this registry"
            f" {sorted(schema.heads())}: restore it with the version that made it"
        )
    if not is_empty(db, store):
        if not force:
            raise BackupError(
                "the target database is not empty; pass --force to replace its contents"
            )
        _empty(db, store)
    with db.engine.begin() as conn:
        conn.execute(delete(schema.target_metadata().tables["revision"]))
        for table in _tables():
            _load_table(conn, table, tar)
        if db.is_postgres:
            _reset_sequences(conn)
    for member in tar.getmembers():
        if member.name.startswith("artifacts/"):
            _restore_artifact(tar, member, store)
    return meta


def _read_meta(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = tar.extractfile("meta.json")
        meta = json.loads(member.read()) if member else None
    except (KeyError, ValueError) as exc:
        raise BackupError(f"the backup has no readable meta.json: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BackupError(f"unknown backup format {meta and meta.get('format')!r}")
    return meta


def _rows(tar: tarfile.TarFile, table: Table) -> Iterator[dict[str, Any]]:
    try:
        member = tar.extractfile(f"tables/{table.name}.jsonl")
    except KeyError:
        return  # a table the backup did not have yet: nothing to load
    if member is None:
        return
    kinds = {c.name: _kind(c.type) for c in table.columns}
    for line in io.TextIOWrapper(member, encoding="utf-8"):
        if line.strip():
            row = json.loads(line)
            yield {k: _decode(v, kinds[k]) for k, v in row.items() if k in kinds}


def _load_table(conn: Connection, table: Table, tar: tarfile.TarFile) -> None:
    batch: list[dict[str, Any]] = []
    for row in _rows(tar, table):
        batch.append(row)
        if len(batch) >= BATCH:
            conn.execute(table.insert(), batch)
            batch = []
    if batch:
        conn.execute(table.insert(), batch)


def _reset_sequences(conn: Connection) -> None:
    """Rows came with their ids: move each serial sequence past the largest one."""
    for table in _tables():
        if "id" not in table.columns or not table.columns["id"].autoincrement:
            continue
        sequence = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table.name}
        ).scalar_one_or_none()
        if sequence:
            conn.execute(
                text(
                    f"SELECT setval('{sequence}', COALESCE((SELECT max(id) FROM {table.name}), 0)"
                    " + 1, false)"
                )
            )


def _empty(db: Database, store: Store) -> None:
    with db.engine.begin() as conn:
        for table in reversed(_tables()):
            conn.execute(delete(table))
    store.delete_all()


def _restore_artifact(tar: tarfile.TarFile, member: tarfile.TarInfo, store: Store) -> None:
    sha = check_sha256(member.name.removeprefix("artifacts/"))
    source = tar.extractfile(member)
    if source is None:
        raise BackupError(f"artifact {sha} in the backup is not a file")
    with tempfile.NamedTemporaryFile() as copy:
        digest = hashlib.sha256()
        while data := source.read(1 << 20):
            digest.update(data)
            copy.write(data)
        copy.flush()
        if digest.hexdigest() != sha:
            raise BackupError(f"artifact {sha} in the backup is damaged (sha256 mismatch)")
        store.save_file(sha, Path(copy.name))
