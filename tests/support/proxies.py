"""A real nginx for the proxy tests, and the desired instance they route to.

One copy for every test that runs nginx itself (tests/integration/test_nginx_real.py,
test_proxy_trust_real.py, test_template_sandbox.py): a prepared `NginxProcess` in the test's
own folder, the `ConfigApplier` that validates and reloads it, and a free port to listen on;
nginx is stopped when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from agent.proxy.config_apply import ConfigApplier
from agent.proxy.nginx import view as nginx
from agent.proxy.nginx.process import NginxProcess, default_worker_user
from common.wire import DesiredInstance
from tests.support.ports import free_port

LiveNginx = tuple[NginxProcess, ConfigApplier, int]


@contextlib.contextmanager
def running_nginx(folder: Path) -> Iterator[LiveNginx]:
    """nginx prepared under `folder/nginx` (not started: the first apply starts it)."""
    process = NginxProcess(folder / "nginx", worker_user=default_worker_user())
    process.prepare()
    applier = ConfigApplier(
        process.conf_dir, nginx.MAIN_FILE, validate=process.validate, reload=process.reload
    )
    try:
        yield process, applier, free_port()
    finally:
        process.stop(grace_s=5.0)


def web_instance(
    iid: int, app: str, *, domains: list[str] | None = None, health_path: str = "/"
) -> DesiredInstance:
    """A served web instance of release 1 of `app` (default domain `<app>.paas.test`)."""
    return DesiredInstance(
        id=iid,
        app=app,
        release=1,
        process="web",
        command="true",
        artifact_sha256="b" * 64,
        env={},
        health_path=health_path,
        domains=domains if domains is not None else [f"{app}.paas.test"],
        serve=True,
    )
