"""cli.pack: ignore rules, a deterministic sha256, symlink escapes and the Procfile check."""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path

import pytest

from cli.errors import PackError
from cli.pack import check_procfile, collect, pack


def make_app(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Procfile").write_text("web: python app.py\n")
    (root / "app.py").write_text("print('hi')\n")
    (root / "lib").mkdir()
    (root / "lib" / "util.py").write_text("X = 1\n")
    return root


def test_always_skips_vcs_venv_and_bytecode(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app")
    for junk in (".git/HEAD", ".venv/bin/python", "lib/__pycache__/util.cpython-311.pyc"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("x")
    files = collect(root)
    assert "app.py" in files and "lib/util.py" in files
    assert not [f for f in files if f.startswith((".git", ".venv")) or "__pycache__" in f]


def test_honours_gitignore_and_paasignore(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app")
    (root / ".gitignore").write_text("*.log\nbuild/\n!keep.log\n")
    (root / ".paasignore").write_text("secrets.env\ndocs/*.md\n")
    for name in (
        "debug.log",
        "keep.log",
        "build/out.bin",
        "secrets.env",
        "docs/a.md",
        "docs/b.txt",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    files = collect(root)
    assert "keep.log" in files and "docs/b.txt" in files
    for gone in ("debug.log", "build/", "build/out.bin", "secrets.env", "docs/a.md"):
        assert gone not in files
    packed = pack(root)
    try:
        with tarfile.open(packed.path) as tar:
            names = tar.getnames()
        assert "Procfile" in names and "lib/util.py" in names and "secrets.env" not in names
    finally:
        packed.path.unlink()


def test_same_tree_same_sha_despite_times_and_order(tmp_path: Path) -> None:
    first = make_app(tmp_path / "one")
    second = tmp_path / "two"
    second.mkdir()
    # Same content, created in another order and with other mtimes.
    (second / "lib").mkdir()
    (second / "lib" / "util.py").write_text("X = 1\n")
    (second / "app.py").write_text("print('hi')\n")
    (second / "Procfile").write_text("web: python app.py\n")
    os.utime(second / "app.py", (time.time() - 9999, time.time() - 9999))
    a, b = pack(first), pack(second)
    try:
        assert a.sha256 == b.sha256 and len(a.sha256) == 64
        with tarfile.open(a.path) as tar:
            for member in tar.getmembers():
                assert member.mtime == 0 and member.uid == 0 and member.gid == 0
                assert member.uname == "" and member.gname == ""
            assert tar.getnames() == sorted(tar.getnames())
    finally:
        a.path.unlink()
        b.path.unlink()


def test_content_change_changes_sha(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app")
    a = pack(root)
    (root / "app.py").write_text("print('changed')\n")
    b = pack(root)
    a.path.unlink()
    b.path.unlink()
    assert a.sha256 != b.sha256


def test_executable_bit_is_kept(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o700)
    packed = pack(root)
    try:
        with tarfile.open(packed.path) as tar:
            assert tar.getmember("run.sh").mode == 0o755
            assert tar.getmember("app.py").mode == 0o644
    finally:
        packed.path.unlink()


def test_refuses_symlink_outside_the_folder(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app")
    (tmp_path / "secret").write_text("s3cr3t")
    (root / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(PackError, match=r"leak.*outside"):
        pack(root)


def test_refuses_relative_symlink_escape(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app")
    (root / "lib" / "up").symlink_to("../../")
    with pytest.raises(PackError, match="outside"):
        pack(root)


def test_keeps_symlink_inside_the_folder_as_a_link(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app")
    (root / "main.py").symlink_to("app.py")
    packed = pack(root)
    try:
        with tarfile.open(packed.path) as tar:
            member = tar.getmember("main.py")
            assert member.issym() and member.linkname == "app.py"
    finally:
        packed.path.unlink()


def test_missing_procfile_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "app.py").write_text("x")
    with pytest.raises(PackError, match="no Procfile"):
        pack(root)


def test_procfile_without_web_line(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "Procfile").write_text("worker: python w.py\n")
    with pytest.raises(PackError, match="no web process"):
        check_procfile(root)


def test_example_hello_packs(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    packed = pack(repo / "examples" / "hello", workdir=tmp_path)
    assert {"Procfile", "app.py", "paas.toml"} <= set(packed.files)
    packed.path.unlink()
