"""`xdist_group` for pytest 9: pytest-xdist 3.8 tags a grouped test by assigning `item._nodeid`,
which pytest 9 no longer reads (a node's id lives in `item._id`), so `--dist loadgroup` spread
a group over every worker. This hook applies the same `<nodeid>@<group>` suffix the scheduler
(xdist's LoadGroupScheduling) splits on. Registered from tests/conftest.py.
"""

from __future__ import annotations

import pytest

try:
    from _pytest.nodeid import coerce_node_id
except ImportError:  # an older pytest: xdist's own suffix works there
    coerce_node_id = None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if coerce_node_id is None or not getattr(config.option, "loadgroup", False):  # xdist worker
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})  # fmt: skip
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
