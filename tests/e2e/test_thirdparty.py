"""An app written the way third-party apps are, deployed with the real CLI, served over HTTPS.

It behaves like a Django app: 400 for any Host but its own (ALLOWED_HOSTS), no page at `/`
(404), it logs to stderr only, starts slowly, binds 0.0.0.0:$PORT itself, carries a Heroku
Procfile with `release:` and `worker:` lines and a runtime.txt, and its requirements.txt
includes requirements/base.txt. The requirement is a wheel built here (--no-index
--find-links): no network needed.

Before the fixes: the install failed (`-r requirements/base.txt` did not resolve), then the
health check failed (400 for Host 127.0.0.1, 404 at /), and the release line was dropped
without a word.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import https_get, logs, paas
from tests.integration.test_thirdparty import _wheel

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-1")]
APP = "thirdparty"
HOST = f"{APP}.localhost"

APP_PY = f"""\
import os, sys, time
from wsgiref.simple_server import make_server

import tpgreeting

print("warming up", file=sys.stderr)
time.sleep(2)
ALLOWED_HOSTS = ["{HOST}"]


def app(environ, start_response):
    host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
    if host not in ALLOWED_HOSTS:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"DisallowedHost\\n"]
    if environ["PATH_INFO"] != "/ping":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    unbuffered = os.environ.get("PYTHONUNBUFFERED")
    return [f"{{tpgreeting.WORD}} from {{host}} unbuffered={{unbuffered}}\\n".encode()]


make_server("0.0.0.0", int(os.environ["PORT"]), app).serve_forever()
"""


def test_django_like_app_with_heroku_procfile_deploys_and_serves(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    app = tmp_path / APP
    # The wheels ship inside the app: its build runs as the app's own uid, which cannot read
    # the test's (root's) folders.
    wheels = app / "wheels"
    wheels.mkdir(parents=True)
    _wheel(wheels, "tpgreeting", "1.0", "WORD = 'hello'\n")
    (app / "requirements").mkdir(parents=True)
    (app / "app.py").write_text(APP_PY)
    (app / "manage.py").write_text("print('migrated')\n")  # the release phase runs it
    (app / "worker.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    (app / "Procfile").write_text(
        "release: python manage.py migrate\nweb: python app.py\nworker: python worker.py\n"
    )
    (app / "runtime.txt").write_text("python-3.11.9\n")
    (app / "requirements.txt").write_text("-r requirements/base.txt\n")
    (app / "requirements" / "base.txt").write_text(
        "--no-index\n--find-links ../wheels\ntpgreeting==1.0\n"  # relative to this file
    )

    done = paas(cluster, "deploy", str(app), "--timeout", "120")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out + logs(cluster)
    assert "Procfile: 'release' runs once per deploy" in out, out
    assert "Procfile: 'worker' runs as a worker" in out, out
    assert "runtime.txt: not read" in out, out

    response = https_get(cluster, HOST, "/ping")
    assert response.status_code == 200, response.text + logs(cluster)
    assert response.text == f"hello from {HOST} unbuffered=1\n"
    assert https_get(cluster, HOST, "/").status_code == 404  # no page at /: still healthy
