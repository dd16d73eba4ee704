"""``spec.selfSigned``: a root CA the operator makes, keeps in a Secret and rotates.

The root lives in the Secret ``nhi-issuer-<name>`` in the issuer's home namespace, with the
previous roots that are still trusted. It is generated when there is none, replaced when a
third of its lifetime is left (:mod:`nhi.policies.ca`), and restored from memory if the
Secret is deleted or damaged while the root is still valid. A Secret of that name the
operator did not make is left alone and reported.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from nhi.builders.ca_secret import CAMaterial, CAProblem
from nhi.builders.issuer import (
    RootMaterial,
    build_root_secret,
    compose_bundle,
    owned_by,
    parse_root_secret,
    root_secret_name,
    rotate,
)
from nhi.crypto import (
    Certificate,
    PrivateKey,
    build_self_signed_ca,
    fingerprint_sha256,
    generate_key,
    load_cert_chain,
    still_valid,
)
from nhi.k8s.client import Api
from nhi.k8s.events import EventRecorder
from nhi.models.duration import rfc3339
from nhi.models.issuer import Issuer, IssuerKey, IssuerReason, SelfSignedSource
from nhi.policies.ca import RootAction, pending_root_changes, restorable, root_action, root_due
from nhi.reconcilers.issuers.sources.base import (
    CASourceStrategy,
    Loaded,
    LoadRequest,
    SecretWatch,
)
from nhi.reconcilers.issuers.status import IssuerOutcome

# The logger name the issuer's log lines have always carried (docs/observability.md).
log = logging.getLogger("nhi.reconcilers.issuer")

_PAST_TENSE = {
    IssuerReason.CA_GENERATED: "generated root CA",
    IssuerReason.CA_ROTATED: "rotated root CA",
    IssuerReason.CA_RESTORED: "restored root CA",
}

Note = tuple[str, str]  # (Event reason, message)


class SelfSignedCA(CASourceStrategy):
    field = "spec.selfSigned"

    def __init__(
        self, api: Api, events: EventRecorder, operator_namespace: str, secrets: SecretWatch
    ) -> None:
        super().__init__(api, events, operator_namespace, secrets)
        self._roots: dict[IssuerKey, RootMaterial] = {}  # each issuer's last root, to restore it

    def forget(self, key: IssuerKey) -> None:
        self._roots.pop(key, None)

    async def load(self, req: LoadRequest) -> Loaded | IssuerOutcome:
        issuer, body, now = req.issuer, req.body, req.now
        source = issuer.source
        assert isinstance(source, SelfSignedSource)
        namespace = issuer.home_namespace(self.operator_namespace)
        name = root_secret_name(issuer)
        self.secrets.track(issuer.key, {(namespace, name)})
        secret = await self.api.get("Secret", namespace, name)
        if secret is not None and not owned_by(secret, issuer):
            return IssuerOutcome(
                False,
                IssuerReason.ROOT_SECRET_CONFLICT,
                f"Secret {namespace}/{name} exists and was not created for {issuer.ref} (it "
                f"lacks the issuer's labels); delete or rename it so the operator can keep the "
                f"root CA there",
                stalled=True,
                retry=True,
            )
        root, problem = _stored(secret)
        notes: list[Note] = []
        restored = False
        remembered = self._roots.get(issuer.key)
        if root is None and restorable(remembered, now):
            # The Secret was deleted or damaged, but the root is still in memory: restore it,
            # so every certificate it signed stays trusted.
            root, restored = remembered, True
            notes.append(
                (IssuerReason.CA_RESTORED, f"restored the root CA in {namespace}/{name}: {problem}")
            )
        action = root_action(root, now)
        where = f"{namespace}/{name}"
        held = f"; the Secret held no usable root: {problem}" if secret is not None else ""
        root = await self._act(action, root, issuer, source, where, held, notes, now)
        if action is not None or restored:
            await self._store(issuer, namespace, root)
        self._roots[issuer.key] = root
        await self._announce(issuer, body, where, root, notes)
        material = CAMaterial(
            cert=root.cert,
            key=root.key,
            chain=(),
            roots=tuple(load_cert_chain(compose_bundle([root.cert], root.previous, now))),
        )
        return Loaded(material, pending_root_changes(source, root.cert), root_due(root))

    async def _act(
        self,
        action: RootAction | None,
        root: RootMaterial | None,
        issuer: Issuer,
        source: SelfSignedSource,
        where: str,
        held: str,
        notes: list[Note],
        now: dt.datetime,
    ) -> RootMaterial:
        """The root after ``action``; what was done is added to ``notes``."""
        if action == "create":
            cert, key = await _new_root(issuer, source, now)
            notes.append(
                (
                    IssuerReason.CA_GENERATED,
                    f"generated root CA {fingerprint_sha256(cert)} ({source.key_algorithm}, valid "
                    f"until {rfc3339(cert.not_valid_after_utc)}) in {where}{held}",
                )
            )
            return RootMaterial(cert=cert, key=key)
        assert root is not None
        if action == "rotate":
            cert, key = await _new_root(issuer, source, now)
            notes.append(
                (
                    IssuerReason.CA_ROTATED,
                    f"rotated root CA {fingerprint_sha256(root.cert)} -> {fingerprint_sha256(cert)}"
                    f" (valid until {rfc3339(cert.not_valid_after_utc)}); the previous root stays "
                    f"in the trust bundle until {rfc3339(root.cert.not_valid_after_utc)}",
                )
            )
            return rotate(root, cert, key, now)
        if action == "prune":
            return RootMaterial(root.cert, root.key, still_valid(root.previous, now))
        return root

    async def _store(self, issuer: Issuer, namespace: str, root: RootMaterial) -> None:
        result = await self.api.apply(build_root_secret(issuer, namespace, root))
        version = str((result.get("metadata") or {}).get("resourceVersion") or "")
        self.secrets.wrote((namespace, root_secret_name(issuer)), version)

    async def _announce(
        self,
        issuer: Issuer,
        body: Mapping[str, Any],
        where: str,
        root: RootMaterial,
        notes: list[Note],
    ) -> None:
        for reason, message in notes:
            log.info(
                _PAST_TENSE.get(reason, reason),
                extra={
                    "issuer": issuer.ref,
                    "secret_name": where,
                    "fingerprint": fingerprint_sha256(root.cert),
                },
            )
            await self.events.normal(body, reason, message)

    async def remove(self, issuer: Issuer) -> str | None:
        """Delete the root Secret made for ``issuer`` (by this spec or an earlier one), if any."""
        home = issuer.home_namespace(self.operator_namespace)
        name = root_secret_name(issuer)
        secret = await self.api.get("Secret", home, name)
        if secret is not None and owned_by(secret, issuer):
            uid = (secret.get("metadata") or {}).get("uid")
            if await self.api.delete("Secret", home, name, uid=uid):
                return f"Secret/{home}/{name}"
        return None


def _stored(secret: Mapping[str, Any] | None) -> tuple[RootMaterial | None, str]:
    """The root kept in the Secret, or None and why there is none."""
    if secret is None:
        return None, "the Secret did not exist"
    try:
        return parse_root_secret(secret), "the Secret did not exist"
    except CAProblem as err:
        return None, err.message


async def _new_root(
    issuer: Issuer, source: SelfSignedSource, now: dt.datetime
) -> tuple[Certificate, PrivateKey]:
    # RSA-4096 takes seconds: keep the event loop (and the other reconciles) running.
    key = await asyncio.to_thread(generate_key, source.key_algorithm)
    common_name = source.common_name or issuer.trust_domain[:64]
    return build_self_signed_ca(common_name, key, now, source.ttl), key
