"""Which custom domains an app may claim, and who may claim them.

Three rules, checked before anything is written (`domains:add`, `apps:create`, PATCH, and the
`domains` of a deploy's paas.toml alike):

1. Never a public suffix, nor a wildcard directly over one (`com`, `*.com`, `*.co.uk`,
   `*.github.io`), whoever asks: such a name is no one's, and a wildcard over it would take
   every site under it. The list is the Public Suffix List as shipped by the
   `publicsuffixlist` package (offline; ICANN and private sections).
2. Never a name under the cluster domain: every app already answers on
   `<app>.<cluster domain>`, and a claim there would let one app take another app's traffic.
3. A deploy token claims only names equal to or under the suffixes an admin allowed for that
   token (`paas tokens:create --scope deploy --app A --domains example.com`); by default
   none. An admin token may claim any other name.

Exact conflicts between custom domains are checked by `deploys.add_domains`. A wildcard and
an exact name under it may belong to different apps: the exact name wins when routing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from controller.errors import Conflict, Forbidden, Invalid


@lru_cache(maxsize=1)
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list shipped in the package: no network


def bare(domain: str) -> str:
    """The name a domain or a wildcard (`*.example.com`) stands over."""
    return domain[2:] if domain.startswith("*.") else domain


def is_public_suffix(name: str) -> bool:
    return bool(_public_suffixes().is_public(name))


def check_not_public(domain: str) -> None:
    """Invalid for a public suffix or a wildcard directly over one."""
    if is_public_suffix(bare(domain)):
        what = (
            "a wildcard directly over a public suffix"
            if domain != bare(domain)
            else "a public suffix"
        )
        raise Invalid(
            f"domain {domain} is {what} ({bare(domain)}): names there belong to their"
            " registrants, not to one app"
        )


def under(domain: str, suffix: str) -> bool:
    name = bare(domain)
    return name == suffix or name.endswith(f".{suffix}")


def check_claimable(
    domains: Iterable[str],
    *,
    cluster_domain: str,
    allowed: Sequence[str] | None,
    owned: Collection[str] = (),
) -> None:
    """Raise for a domain nobody, or not this token, may claim.

    `allowed`: None for an admin (any name the first two rules leave), else the suffixes a
    deploy token was given (empty: no custom domain at all). `owned`: the app's domains
    now; a deploy token may keep (re-list in paas.toml) what an admin gave its app."""
    for domain in domains:
        check_not_public(domain)
        if under(domain, cluster_domain):
            raise Conflict(
                f"domain {domain} is under the cluster domain {cluster_domain}, which is"
                f" reserved: every app already answers on <app>.{cluster_domain}"
            )
        if domain in owned:
            continue
        if allowed is not None and not any(under(domain, suffix) for suffix in allowed):
            if allowed:
                raise Forbidden(
                    f"this deploy token may claim domains only under {', '.join(allowed)};"
                    f" {domain} is not: ask an admin"
                )
            raise Forbidden(
                f"this deploy token may not claim custom domains ({domain}); an admin allows"
                " some with `paas tokens:create --scope deploy --app APP --domains SUFFIX`"
            )


def check_allowance(suffixes: Iterable[str]) -> list[str]:
    """The suffixes an admin gives a deploy token: exact names, no wildcard, no public
    suffix (allowing `co.uk` would hand out every site under it)."""
    result: list[str] = []
    for suffix in suffixes:
        if suffix.startswith("*."):
            raise Invalid(
                f"allow {suffix[2:]} instead of {suffix}: an allowed domain covers every name"
                " under it"
            )
        check_not_public(suffix)
        if suffix not in result:
            result.append(suffix)
    return result
