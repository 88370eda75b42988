"""Which custom domains an app may claim: never a name under the cluster domain.

Every app already answers on `<app>.<cluster domain>`; letting a user claim a name (or a
wildcard) under the cluster domain would let one app take another app's traffic. Exact
conflicts between custom domains are checked by `deploys.add_domains`. A wildcard and an
exact name under it may belong to different apps: the exact name wins when routing.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.errors import Conflict


def check_claimable(domains: Iterable[str], *, cluster_domain: str) -> None:
    """Raise Conflict for a domain the cluster reserves for its apps."""
    for domain in domains:
        bare = domain[2:] if domain.startswith("*.") else domain
        if bare == cluster_domain or bare.endswith(f".{cluster_domain}"):
            raise Conflict(
                f"domain {domain} is under the cluster domain {cluster_domain}, which is"
                f" reserved: every app already answers on <app>.{cluster_domain}"
            )
