"""The release phase's outcome as the registry records it (pure): an install failure is an
install failure in plain text, not "release phase exited"; the output of a phase that ran is
kept with the release either way."""

from __future__ import annotations

import json

from controller.core.release_phase import PhaseResult, phase_outcome, refusal
from controller.store.models import App, Release

UV_OUTPUT = (
    "installing dependencies failed (uv pip install exited 1):\n"
    "  \u00d7 No solution found when resolving dependencies:\n"
    "  ╰─▶ Because there is no version of nosuchpkg==9.9 and you require nosuchpkg==9.9,\n"
    '      we can conclude that your requirements are unsatisfiable. "quoted"'
)


def release() -> Release:
    return Release(
        version=3,
        processes={"web": "python app.py", "release": "echo migrate"},
        app=App(name="shop"),
    )


def agent_answer(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()


def test_an_install_failure_is_reported_as_such_in_plain_text() -> None:
    body = agent_answer(f"release 3 of shop could not be installed: {UV_OUTPUT}")
    message, install_failed = refusal(404, body)
    assert install_failed and message == UV_OUTPUT
    row = release()
    reason = phase_outcome(row, PhaseResult(1, "", refused=message, install_failed=True), "m1")
    assert reason == (
        "install failed on host m1; the release phase (`echo migrate`) did not run:\n" + UV_OUTPUT
    )
    assert "\\n" not in reason and '\\"' not in reason and "exited with status" not in reason
    assert row.release_output is None


def test_other_refusals_say_the_phase_did_not_run() -> None:
    message, install_failed = refusal(503, agent_answer("this host has not joined the registry"))
    assert not install_failed
    reason = phase_outcome(release(), PhaseResult(1, "", refused=message), "m1")
    assert reason == (
        "release phase (`echo migrate`) not run on host m1: the agent answered 503:"
        " this host has not joined the registry"
    )
    assert refusal(502, b"<html>bad gateway</html>") == (
        "the agent answered 502: <html>bad gateway</html>",
        False,
    )


def test_the_output_of_a_phase_that_ran_is_kept() -> None:
    passed = release()
    assert (
        phase_outcome(passed, PhaseResult(0, "migrating...\n3 migrations applied\n"), "m1") is None
    )
    assert passed.release_output == "migrating...\n3 migrations applied"
    failed = release()
    reason = phase_outcome(failed, PhaseResult(2, "migrating...\nno such table\n"), "m2")
    assert reason == (
        "release phase (`echo migrate`) on host m2 exited with status 2:\n"
        "migrating...\nno such table"
    )
    assert failed.release_output == "migrating...\nno such table"
