"""agent/proxy/render.py compiles a template once per text: a render reuses the compiled code
while the file is unchanged, and the next render after an edit uses the new text."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.proxy.render import make_environment, render


def test_a_template_compiles_once_per_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    template = tmp_path / "site.conf.j2"
    template.write_text("listen {{ port }};\n")
    env = make_environment([tmp_path], operator_dirs=[])
    compiled: list[str] = []
    real_compile = env.compile

    def counting_compile(source: str, *args: object, **kwargs: object) -> object:
        compiled.append(source)
        return real_compile(source, *args, **kwargs)

    monkeypatch.setattr(env, "compile", counting_compile)

    assert render(env, "site.conf.j2", {"port": 80}) == "listen 80;\n"
    assert render(env, "site.conf.j2", {"port": 81}) == "listen 81;\n"
    assert len(compiled) == 1

    template.write_text("listen {{ port }} reuseport;\n")  # edited while the agent runs
    assert render(env, "site.conf.j2", {"port": 82}) == "listen 82 reuseport;\n"
    assert len(compiled) == 2
