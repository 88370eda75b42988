"""One ACME http-01 issuance, spoken through certbot's `acme` library (no hand-written JWS).

No database, no clock of our own: the caller passes the account key and two callbacks,
`publish` (make every frontend answer these challenges, and return once they do) and
`withdraw`. Blocking; the registry runs it in a thread. Errors of the library, the network
and the CA come out as one `AcmeFailed` with a message an operator can act on.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

import josepy
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization

from common.names import check_acme_key_authorization, check_acme_token, check_domain
from controller.acme.protocol import AcmeFailed, Challenge, Issued, new_key_pem

log = logging.getLogger("paas.registry.acme")

USER_AGENT = "paas-registry"


class AcmeIssuer:
    def __init__(
        self,
        directory_url: str,
        *,
        account_key_pem: str,
        ca_bundle: Path | None = None,
        contact_email: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.directory_url = directory_url
        self.ca_bundle = ca_bundle
        self.contact_email = contact_email
        self.timeout_s = timeout_s
        key = serialization.load_pem_private_key(account_key_pem.encode(), password=None)
        self._jwk = josepy.JWKEC(key=key)

    def issue(
        self,
        domain: str,
        *,
        publish: Callable[[list[Challenge]], None],
        withdraw: Callable[[list[Challenge]], None],
    ) -> Issued:
        """Order, answer http-01 through the frontends, finalize; the certificate for `domain`."""
        check_domain(domain)
        if domain.startswith("*."):
            raise AcmeFailed(f"{domain}: wildcard names need dns-01, which is not supported")
        step = "connecting to the ACME directory"
        published: list[Challenge] = []
        try:
            acme = self._client()
            step = "registering the ACME account"
            self._register(acme)
            key_pem = new_key_pem().encode()
            csr_pem = crypto_util.make_csr(key_pem, [domain])
            step = "creating the order"
            order = acme.new_order(csr_pem)
            pending = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA still trusts an earlier validation of this name
                chall = _http01(authz)
                response, validation = chall.response_and_validation(self._jwk)
                token = chall.chall.encode("token")
                published.append(
                    Challenge(
                        domain=authz.body.identifier.value,
                        token=check_acme_token(token),
                        key_authorization=check_acme_key_authorization(validation),
                    )
                )
                pending.append((chall, response))
            if published:
                step = "publishing the http-01 answers to the frontends"
                publish(published)
                step = "answering the challenges"
                for chall, response in pending:
                    acme.answer_challenge(chall, response)
            step = "waiting for validation and the certificate"
            deadline = dt.datetime.now() + dt.timedelta(seconds=self.timeout_s)
            done = acme.poll_and_finalize(order, deadline)
        except errors.ValidationError as exc:
            raise AcmeFailed(f"{domain}: the CA could not validate: {_authz_errors(exc)}") from exc
        except errors.TimeoutError as exc:
            raise AcmeFailed(f"{domain}: timed out {step}") from exc
        except (errors.Error, messages.Error, requests.RequestException, josepy.Error) as exc:
            raise AcmeFailed(f"{domain}: failed {step}: {exc}") from exc
        finally:
            if published:
                withdraw(published)
        if not done.fullchain_pem:
            raise AcmeFailed(f"{domain}: the CA sent no certificate")
        return Issued(fullchain_pem=done.fullchain_pem, key_pem=key_pem.decode())

    def _client(self) -> client.ClientV2:
        verify: bool | str = str(self.ca_bundle) if self.ca_bundle else True
        net = client.ClientNetwork(
            self._jwk,
            alg=josepy.ES256,
            verify_ssl=verify,  # type: ignore[arg-type]  # requests also takes a CA bundle path
            user_agent=USER_AGENT,
            timeout=int(self.timeout_s),
        )
        directory = client.ClientV2.get_directory(self.directory_url, net)
        return client.ClientV2(directory, net)

    def _register(self, acme: client.ClientV2) -> None:
        """The account exists after this; an existing one (same key) is simply looked up."""
        registration = messages.NewRegistration.from_data(
            email=self.contact_email, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:
            regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
            acme.net.account = regr


def _http01(authz: messages.AuthorizationResource) -> messages.ChallengeBody:
    for chall in authz.body.challenges:
        if isinstance(chall.chall, challenges.HTTP01):
            return chall
    name = authz.body.identifier.value
    raise AcmeFailed(f"{name}: the CA offers no http-01 challenge")


def _authz_errors(exc: errors.ValidationError) -> str:
    found = []
    for authz in exc.failed_authzrs:
        for chall in authz.body.challenges:
            if chall.error is not None:
                found.append(f"{authz.body.identifier.value}: {chall.error}")
    return "; ".join(found) or str(exc)
