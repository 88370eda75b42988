"""Artifact upload: content-addressed, hash-checked, size-limited, idempotent."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from controller.store.artifact_scan import SCAN_SLOTS
from tests.support.archive_corpus import MiB, TarGz, big_file, file, many_members_targz
from tests.support.mounts import tmpfs
from tests.support.registry_app import TestRegistry, make_artifact, sha256_of, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path / "state", max_artifact_bytes=4096) as registry:
        yield registry


def stored_files(reg: TestRegistry) -> list[str]:
    root = reg.settings.artifacts_dir
    if not root.exists():
        return []
    return sorted(str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files)


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_upload_head_get(reg: TestRegistry) -> None:
    data = make_artifact({"Procfile": "web: x\n"})
    sha = sha256_of(data)
    assert reg.client.head(f"/v1/artifacts/{sha}", headers=reg.admin).status_code == 404
    response = reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.admin)
    assert response.status_code == 200
    assert response.json() == {"sha256": sha, "size": len(data)}
    assert stored_files(reg) == [f"{sha[:2]}/{sha}"]
    assert reg.client.head(f"/v1/artifacts/{sha}", headers=reg.admin).status_code == 200
    assert reg.client.get(f"/v1/artifacts/{sha}", headers=reg.admin).content == data


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_reupload_is_idempotent(reg: TestRegistry) -> None:
    data = make_artifact({"Procfile": "web: x\n"})
    sha = reg.upload(data)
    again = reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.admin)
    assert again.status_code == 200 and again.json()["size"] == len(data)
    assert stored_files(reg) == [f"{sha[:2]}/{sha}"]


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_hash_mismatch_stores_nothing(reg: TestRegistry) -> None:
    sha = sha256_of(b"something else")
    response = reg.client.put(f"/v1/artifacts/{sha}", content=b"payload", headers=reg.admin)
    assert response.status_code == 422
    assert "nothing stored" in response.json()["detail"]
    assert stored_files(reg) == []
    assert reg.client.head(f"/v1/artifacts/{sha}", headers=reg.admin).status_code == 404


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_too_large_is_413_and_leaves_nothing(reg: TestRegistry) -> None:
    data = os.urandom(5000)
    sha = sha256_of(data)
    response = reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.admin)
    assert response.status_code == 413
    assert stored_files(reg) == []

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    streamed = reg.client.put(f"/v1/artifacts/{sha}", content=chunks(), headers=reg.admin)
    assert streamed.status_code == 413
    assert stored_files(reg) == []


def test_bad_sha_is_422(reg: TestRegistry) -> None:
    for sha in ["abc", "A" * 64, "../" + "a" * 61]:
        response = reg.client.put(f"/v1/artifacts/{sha}", content=b"x", headers=reg.admin)
        assert response.status_code in (404, 422), sha
    response = reg.client.put("/v1/artifacts/" + "g" * 64, content=b"x", headers=reg.admin)
    assert response.status_code == 422 and "sha256" in response.json()["detail"]


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_full_artifact_store_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    """A real full filesystem (2 MiB tmpfs) under the artifact store."""
    state = tmp_path / "state"
    with (
        tmpfs(state / "artifacts", size="2m"),
        test_registry(state, max_artifact_bytes=8 << 20) as reg,
    ):
        kept = os.urandom(1 << 20)
        kept_sha = reg.upload(kept)
        big = os.urandom(3 << 20)
        big_sha = sha256_of(big)
        response = reg.client.put(f"/v1/artifacts/{big_sha}", content=big, headers=reg.admin)
        assert response.status_code == 507, response.text
        assert response.json()["detail"] == (
            "no space left on the registry's artifact store; nothing was stored"
        )
        assert stored_files(reg) == [f"{kept_sha[:2]}/{kept_sha}"]  # no partial file
        assert reg.client.head(f"/v1/artifacts/{big_sha}", headers=reg.admin).status_code == 404
        # What was stored before is whole, and a small upload still fits.
        assert reg.client.get(f"/v1/artifacts/{kept_sha}", headers=reg.admin).content == kept
        reg.upload(make_artifact({"Procfile": "web: x\n"}))


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_full_database_disk_is_507_and_changes_nothing(tmp_path: Path) -> None:
    """The registry's whole state folder on a small tmpfs that something else filled."""
    state = tmp_path / "state"
    with tmpfs(state, size="2m"), test_registry(state) as reg:
        reg.create_app("before")
        filler = state / "filler"
        with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
        response = reg.client.post("/v1/apps", json={"name": "after"}, headers=reg.admin)
        assert response.status_code == 507, response.text
        assert "no space left on the registry's database disk" in response.json()["detail"]
        listed = reg.client.get("/v1/apps", headers=reg.admin)  # reads still answer
        assert [a["name"] for a in listed.json()] == ["before"]
        filler.unlink()
        reg.create_app("after")


# Bounded inspection of artifacts when a release is created (issue 12 hole 6; issue 14).


def _release(reg: TestRegistry, app: str, sha: str) -> httpx.Response:
    return reg.client.post(
        f"/v1/apps/{app}/releases", json={"artifact_sha256": sha}, headers=reg.admin
    )


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[TestRegistry]:
    """A registry with the default limits, and one app."""
    with test_registry(tmp_path / "state") as registry:
        registry.create_app("shop")
        yield registry


def test_gzip_bomb_member_is_413_from_its_header(roomy: TestRegistry) -> None:
    """1 GiB of zeros in 1 MB, before the Procfile: refused without reading it."""
    bomb = TarGz().add(*big_file("data.bin", 1 << 30), *file("Procfile", b"web: x\n")).finish()
    sha = roomy.upload(bomb)
    started = time.monotonic()
    response = _release(roomy, "shop", sha)
    assert response.status_code == 413, response.text
    assert (
        "'data.bin' is 1073741824 bytes, more than the limit of 536870912"
        in (response.json()["detail"])
    )
    assert time.monotonic() - started < 2


def test_gzip_bomb_of_many_members_is_413_at_the_total(roomy: TestRegistry) -> None:
    """600 x 1 MiB of zeros (600 kB): reading stops where the total passes 512 MiB."""
    bomb = TarGz().add(*[p for n in range(600) for p in big_file(f"z{n}", MiB)])
    sha = roomy.upload(bomb.add(*file("Procfile", b"web: x\n")).finish())
    started = time.monotonic()
    response = _release(roomy, "shop", sha)
    elapsed = time.monotonic() - started
    assert response.status_code == 413, response.text
    assert (
        "unpacks to more than 536870912 bytes (512 MiB) at entry 'z512'"
        in (response.json()["detail"])
    )
    assert elapsed < 10, elapsed
    again = time.monotonic()  # the refusal is remembered: no second read
    assert _release(roomy, "shop", sha).status_code == 413
    assert time.monotonic() - again < 0.5


def test_half_a_million_members_is_413_at_the_count(roomy: TestRegistry, tmp_path: Path) -> None:
    many = many_members_targz(tmp_path / "many.tar.gz", 500_000).read_bytes()
    sha = roomy.upload(many)
    started = time.monotonic()
    response = _release(roomy, "shop", sha)
    assert response.status_code == 413, response.text
    assert response.json()["detail"].endswith("archive has more than 20000 entries")
    assert time.monotonic() - started < 5


def test_scan_stops_once_both_files_are_found(roomy: TestRegistry) -> None:
    """The files come first, a bomb after them is never read (the agents refuse it later)."""
    archive = TarGz().add(
        *file("./Procfile", b"web: python app.py\n"),
        *file("paas.toml", b"health_path = '/up'\n"),
        *big_file("after.bin", 1 << 30),
    )
    sha = roomy.upload(archive.finish())
    response = _release(roomy, "shop", sha)
    assert response.status_code == 201, response.text


def test_other_requests_answer_while_bombs_are_read(roomy: TestRegistry) -> None:
    """48 releases of 6 distinct bombs at once (each read up to the 512 MiB limit, ~1 s) hold
    at most SCAN_SLOTS + SCAN_QUEUE worker threads; the rest get 503 at once, repeats of a
    refused one a 413 at once, and GET /v1/apps keeps answering quickly (measured: 0.3 s at
    worst, 20 ms on average). Before, 40 such requests took every worker thread for a minute."""
    prefix = TarGz().add(*[p for n in range(520) for p in big_file(f"z{n}", MiB)])
    shas = [
        roomy.upload(prefix.copy().add(*file(f"variant-{n}"), *file("Procfile")).finish())
        for n in range(6)
    ]
    latencies: list[float] = []
    with ThreadPoolExecutor(max_workers=48) as pool:
        futures = [pool.submit(_release, roomy, "shop", sha) for sha in shas * 8]
        while not all(f.done() for f in futures):
            started = time.monotonic()
            listed = roomy.client.get("/v1/apps", headers=roomy.admin)
            latencies.append(time.monotonic() - started)
            assert listed.status_code == 200 and listed.json()[0]["name"] == "shop"
        responses = [f.result() for f in futures]
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {413, 503}, statuses
    assert statuses.count(413) >= SCAN_SLOTS, statuses
    for response in responses:
        detail = response.json()["detail"]
        if response.status_code == 413:
            assert "more than 536870912 bytes (512 MiB)" in detail, detail
        else:
            assert "retry in a few seconds" in detail, detail
    assert len(latencies) >= 3
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
