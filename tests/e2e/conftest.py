"""The e2e tests' shared cluster.

Every worker that runs a test using it starts one (about 5 s of CPU, then about 4 % of a
core while idle), so the modules that use only this cluster sit in two xdist groups,
`e2e-shared-1` and `e2e-shared-2` (about a minute of tests each): two clusters per run
instead of one per worker. A module with a cluster of its own keeps a group of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cli.local import LocalCluster
from tests.conftest import running_cluster, short_dir


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One real cluster for the e2e tests a worker runs; its CLI login lives in a tmp
    PAAS_CONFIG. Package-scoped, so it stops once the worker moves on to other tiers
    (an idle cluster keeps about 4 % of a core busy) rather than at the end of the session."""
    previous = os.environ.get("PAAS_CONFIG")
    os.environ["PAAS_CONFIG"] = str(tmp_path_factory.mktemp("cli") / "config.json")
    try:
        with short_dir("paas-e2e-") as state, running_cluster(state / "s") as started:
            yield started
    finally:
        if previous is None:
            os.environ.pop("PAAS_CONFIG", None)
        else:
            os.environ["PAAS_CONFIG"] = previous
