"""Instance logs on a host: drained from the raw file, stamped, rotated, read back, followed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.machine.run.logs import LogFollowers, LogStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def raw(tmp_path: Path, app: str = "web", iid: int = 1) -> Path:
    path = tmp_path / app / f"{iid}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def append(path: Path, text: str) -> None:
    with path.open("a") as out:
        out.write(text)


def test_lines_are_stamped_once_and_partial_lines_wait(tmp_path: Path) -> None:
    clock = Clock()
    store = LogStore(tmp_path, clock=clock)
    log = raw(tmp_path)
    append(log, "one\ntwo\nhalf")
    assert [e.line for e in store.drain_all()] == ["one", "two"]
    assert store.drain_all() == []  # nothing new; "half" waits for its newline
    clock.now = 1005.0
    append(log, " done\n")
    new = store.drain_all()
    assert [(e.line, e.time, e.instance, e.app) for e in new] == [("half done", 1005.0, 1, "web")]
    # A new store (a restarted agent) continues from the kept offset: nothing repeated.
    assert LogStore(tmp_path, clock=clock).drain_all() == []
    assert [e.line for e in store.history("web")] == ["one", "two", "half done"]


def test_raw_file_is_truncated_in_place_past_the_limit(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=4096, keep=2)
    log = raw(tmp_path)
    with log.open("ab") as app_stdout:  # the app keeps its O_APPEND handle across the truncate
        app_stdout.write(b"x" * 5000 + b"\n")
        app_stdout.flush()
        store.drain_all()
        assert log.stat().st_size == 0
        app_stdout.write(b"after truncate\n")
        app_stdout.flush()
    assert log.read_bytes() == b"after truncate\n"  # at the new end, not a sparse hole
    assert [e.line for e in store.drain_all()] == ["after truncate"]


def test_stamped_logs_rotate_and_keep_a_few(tmp_path: Path) -> None:
    clock = Clock()
    store = LogStore(tmp_path, max_bytes=4096, keep=2, clock=clock)
    log = raw(tmp_path)
    for n in range(40):
        clock.now += 1
        append(log, f"line {n} " + "y" * 300 + "\n")
        store.drain_all()
    files = sorted(p.name for p in (tmp_path / "web").glob("1.out*"))
    assert files == ["1.out", "1.out.1", "1.out.2"]
    kept = store.history("web")
    assert kept[-1].line.startswith("line 39 ")
    assert not any(e.line.startswith("line 0 ") for e in kept)  # rotated away
    numbers = [int(e.line.split()[1]) for e in kept]
    assert numbers == sorted(numbers)


def test_history_merges_instances_by_time_and_filters(tmp_path: Path) -> None:
    clock = Clock()
    store = LogStore(tmp_path, clock=clock)
    a, b = raw(tmp_path, iid=1), raw(tmp_path, iid=2)
    for n, target in enumerate([a, b, a, b]):
        clock.now = 1000.0 + n
        append(target, f"l{n}\n")
        store.drain_all()
    assert [(e.instance, e.line) for e in store.history("web")] == [
        (1, "l0"),
        (2, "l1"),
        (1, "l2"),
        (2, "l3"),
    ]
    assert [e.line for e in store.history("web", lines=2)] == ["l2", "l3"]
    assert [e.line for e in store.history("web", since=1001.5)] == ["l2", "l3"]
    assert store.history("nothing") == []
    wire = store.history("web")[0].to_wire("m1")
    assert wire == {
        "app": "web",
        "instance": 1,
        "host": "m1",
        "time": "1970-01-01T00:16:40.000Z",
        "line": "l0",
    }


def test_followers_get_only_their_apps_lines(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LogStore(tmp_path)
        followers = LogFollowers()
        web, api = raw(tmp_path, "web"), raw(tmp_path, "api")
        with followers.follow("web") as queue:
            append(web, "for web\n")
            append(api, "for api\n")
            followers.publish(store.drain_all())
            assert queue.get_nowait().line == "for web"
            assert queue.empty()
        followers.publish(store.drain_all())  # nobody follows: nothing kept

    asyncio.run(scenario())


def test_logs_of_instances_gone_for_long_are_pruned(tmp_path: Path) -> None:
    clock = Clock()
    store = LogStore(tmp_path, clock=clock)
    for iid in (1, 2, 3):
        append(raw(tmp_path, iid=iid), f"from {iid}\n")
    store.drain_all()
    clock.now = 10_000_000_000.0  # far later: every file is old
    removed = store.prune(keep={("web", 3)}, older_than_s=3600)
    assert removed == 2
    assert sorted(p.name for p in (tmp_path / "web").iterdir()) == ["3.log", "3.offset", "3.out"]
    clock.now = 0.0  # nothing is old yet
    assert store.prune(keep=set(), older_than_s=3600) == 0
