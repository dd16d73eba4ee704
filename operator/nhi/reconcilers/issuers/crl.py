"""Each issuer's CRL: a ConfigMap in its home namespace, signed by its current CA.

The published CRL is the state: its entries are read back, united with what this process
published last (entries only ever add revocations), and the CRL is signed again only when
:func:`nhi.policies.ca.plan_crl` says so. The ConfigMap is written only if the operator
created it (provenance tag of its UID, :mod:`nhi.policies.provenance`); a ConfigMap of that
name made by anyone else is left alone and reported, naming the issuer that holds the name
when there is one.

Called by the issuer controller with the issuer's lock held.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi.builders.issuer import (
    CRL_KEY,
    build_crl_configmap,
    configmap_text,
    crl_purpose,
    legacy_crl,
)
from nhi.crypto import (
    Certificate,
    CertificateRevocationList,
    CryptoError,
    RevokedSerial,
    build_crl,
    crl_entries,
    crl_number,
    crl_pem,
    load_cert_chain,
    load_crl,
    verify_crl,
)
from nhi.k8s.client import Api
from nhi.models.issuer import (
    ISSUER_KIND_LABEL,
    ISSUER_LABEL,
    PROVENANCE_ANNOTATION,
    Issuer,
    IssuerKey,
    IssuerReason,
)
from nhi.policies.ca import CrlPlan, crl_resign_at, plan_crl
from nhi.policies.provenance import Origin, configmap_origin
from nhi.reconcilers.issuers.provenance import Provenance, ProvenanceError, ProvenanceKeys
from nhi.reconcilers.issuers.signers import IssuerNotReady, RemoteCA, Signer

# The logger name the issuer's log lines have always carried (docs/observability.md).
log = logging.getLogger("nhi.reconcilers.issuer")


@dataclass(frozen=True)
class PublishedCrl:
    """What this process published last for an issuer."""

    number: int
    entries: list[RevokedSerial]
    resign_at: dt.datetime

    @property
    def counts(self) -> tuple[int, int]:
        """(CRL number, serials listed), for the status."""
        return self.number, len(self.entries)


class CrlPublisher:
    def __init__(
        self,
        api: Api,
        provenance: ProvenanceKeys,
        operator_namespace: str,
        issuers: Callable[[], Iterable[Issuer]],
    ) -> None:
        self.api = api
        self.provenance = provenance
        self.operator_namespace = operator_namespace
        #: The issuers known now (to name the one that holds a CRL name).
        self.issuers = issuers
        self._published: dict[IssuerKey, PublishedCrl] = {}
        self._uids: dict[IssuerKey, str] = {}  # the CRL ConfigMap this process created or checked

    def last(self, key: IssuerKey) -> PublishedCrl | None:
        return self._published.get(key)

    def forget(self, key: IssuerKey) -> None:
        self._published.pop(key, None)
        self._uids.pop(key, None)

    async def publish(
        self,
        issuer: Issuer,
        signer: Signer,
        now: dt.datetime,
        new: Sequence[RevokedSerial] = (),
    ) -> tuple[PublishedCrl, list[RevokedSerial]]:
        """Keep the CRL current; add ``new`` entries. (what is published, entries added).

        IssuerNotReady when the ConfigMap is not the operator's or the provenance key cannot
        be read.
        """
        namespace = issuer.home_namespace(self.operator_namespace)
        cm = await self.api.get("ConfigMap", namespace, issuer.crl_configmap)
        if cm is not None and await self.origin(cm, issuer) == "foreign":
            self._uids.pop(issuer.key, None)
            raise IssuerNotReady(IssuerReason.CRL_CONFLICT, self._conflict(issuer, cm))
        published = _readable(cm)
        provenance = await self._provenance()
        uid = str(((cm or {}).get("metadata") or {}).get("uid") or "")
        tag = provenance.tag(uid, crl_purpose(issuer)) if uid else ""
        last = self._published.get(issuer.key)
        plan = plan_crl(
            published,
            (last.number, last.entries) if last is not None else None,
            new,
            ca_cert=signer.ca_cert,
            anchors=load_cert_chain(signer.bundle_pem),
            validity=issuer.crl_validity,
            tagged=cm is not None and _annotation(cm, PROVENANCE_ANNOTATION) == tag,
            now=now,
        )
        if plan.why is not None:
            crl = await self._write(issuer, signer, plan, cm, (uid, tag), provenance, now)
        else:
            assert published is not None
            crl = published
        state = PublishedCrl(plan.number, plan.entries, crl_resign_at(crl, issuer.crl_validity))
        self._published[issuer.key] = state
        return state, plan.added

    async def _write(
        self,
        issuer: Issuer,
        signer: Signer,
        plan: CrlPlan,
        cm: Mapping[str, Any] | None,
        tagged: tuple[str, str],
        provenance: Provenance,
        now: dt.datetime,
    ) -> CertificateRevocationList:
        """Sign and write the CRL ``plan`` describes; ``tagged``: the ConfigMap's (uid, tag)."""
        namespace = issuer.home_namespace(self.operator_namespace)
        crl = build_crl(
            ca_cert=signer.ca_cert,
            ca_key=signer.ca_key,
            revoked=plan.entries,
            now=now,
            next_update=issuer.crl_validity,
            crl_number=plan.number,
        )
        await self._store(issuer, crl_pem(crl), cm, tagged, provenance)
        log.info(
            "published CRL",
            extra={
                "issuer": issuer.ref,
                "configmap": f"{namespace}/{issuer.crl_configmap}",
                "crl_number": plan.number,
                "revoked": len(plan.entries),
                "why": plan.why,
            },
        )
        return crl

    async def _store(
        self,
        issuer: Issuer,
        pem: bytes,
        cm: Mapping[str, Any] | None,
        tagged: tuple[str, str],
        provenance: Provenance,
    ) -> None:
        """Write ``pem`` into the issuer's CRL ConfigMap (created when ``cm`` is None)."""
        namespace = issuer.home_namespace(self.operator_namespace)
        uid, tag = tagged
        if cm is None:
            # POST: fails if the name was taken meanwhile; nothing is overwritten.
            created = await self.api.create(
                "ConfigMap", namespace, build_crl_configmap(issuer, namespace, pem)
            )
            uid = str((created.get("metadata") or {}).get("uid") or "")
            tag = provenance.tag(uid, crl_purpose(issuer))
        self._uids[issuer.key] = uid
        # Conditional on the UID: never writes a namesake created meanwhile.
        await self.api.apply(build_crl_configmap(issuer, namespace, pem, uid=uid, tag=tag))

    async def mirror(
        self, issuer: Issuer, ca_cert: Certificate, pem: str, now: dt.datetime
    ) -> PublishedCrl:
        """Copy a CRL signed elsewhere (Vault's) into the issuer's CRL ConfigMap, when it
        differs from what the ConfigMap holds. IssuerNotReady when the ConfigMap is not the
        operator's or the CRL is not the CA's."""
        try:
            crl = load_crl(pem)
            verify_crl(crl, ca_cert)
        except CryptoError as err:
            raise IssuerNotReady(
                IssuerReason.CA_SECRET_INVALID, f"the server's CRL cannot be used: {err}"
            ) from None
        namespace = issuer.home_namespace(self.operator_namespace)
        cm = await self.api.get("ConfigMap", namespace, issuer.crl_configmap)
        if cm is not None and await self.origin(cm, issuer) == "foreign":
            self._uids.pop(issuer.key, None)
            raise IssuerNotReady(IssuerReason.CRL_CONFLICT, self._conflict(issuer, cm))
        provenance = await self._provenance()
        uid = str(((cm or {}).get("metadata") or {}).get("uid") or "")
        tag = provenance.tag(uid, crl_purpose(issuer)) if uid else ""
        text = crl_pem(crl)
        held = configmap_text(cm, CRL_KEY) if cm is not None else None
        tagged = cm is not None and _annotation(cm, PROVENANCE_ANNOTATION) == tag
        entries = crl_entries(crl)
        if held != text.decode() or not tagged:
            await self._store(issuer, text, cm, (uid, tag), provenance)
            log.info(
                "mirrored CRL",
                extra={
                    "issuer": issuer.ref,
                    "configmap": f"{namespace}/{issuer.crl_configmap}",
                    "crl_number": crl_number(crl),
                    "revoked": len(entries),
                },
            )
        resign = crl.next_update_utc or (now + issuer.crl_validity)
        state = PublishedCrl(crl_number(crl), entries, resign)
        self._published[issuer.key] = state
        return state

    async def revoke_remote(
        self, issuer: Issuer, ca: RemoteCA, new: Sequence[RevokedSerial], now: dt.datetime
    ) -> tuple[PublishedCrl, list[RevokedSerial]]:
        """The server (Vault) revokes and signs its CRL; the CRL ConfigMap mirrors it.
        (what is published, entries added)."""
        before = self.last(issuer.key)
        listed = {e.serial for e in before.entries} if before is not None else set()
        pem = await ca.signing.revoke([e.serial for e in new])
        published = await self.mirror(issuer, ca.cert, pem, now)
        now_listed = {e.serial for e in published.entries}
        added = [e for e in new if e.serial in now_listed and e.serial not in listed]
        return published, added

    async def _provenance(self) -> Provenance:
        try:
            return await self.provenance.get()
        except ProvenanceError as err:
            raise IssuerNotReady(IssuerReason.API_ERROR, str(err)) from None

    async def origin(self, cm: Mapping[str, Any], issuer: Issuer) -> Origin:
        """Who made the ConfigMap that holds (or would hold) the issuer's CRL."""
        uid = str((cm.get("metadata") or {}).get("uid") or "")
        if uid and self._uids.get(issuer.key) == uid:
            return "ours"
        provenance = await self._provenance()
        return configmap_origin(
            cm,
            key=provenance.key,
            purpose=crl_purpose(issuer),
            created_before=provenance.since,
            legacy=legacy_crl(issuer),
        )

    async def remove(self, issuer: Issuer) -> str | None:
        """Delete the issuer's CRL ConfigMap unless someone else made it."""
        home = issuer.home_namespace(self.operator_namespace)
        cm = await self.api.get("ConfigMap", home, issuer.crl_configmap)
        if cm is not None and await self.origin(cm, issuer) != "foreign":
            uid = (cm.get("metadata") or {}).get("uid")
            if await self.api.delete("ConfigMap", home, issuer.crl_configmap, uid=uid):
                return f"ConfigMap/{home}/{issuer.crl_configmap}"
        return None

    def _conflict(self, issuer: Issuer, cm: Mapping[str, Any]) -> str:
        """Why the CRL cannot be published there, naming the field and who has the name."""
        home = issuer.home_namespace(self.operator_namespace)
        where = f"ConfigMap {home}/{issuer.crl_configmap} (spec.crl.configMapName)"
        other = next(
            (
                known.ref
                for known in self.issuers()
                if known.key != issuer.key
                and known.crl_configmap == issuer.crl_configmap
                and known.home_namespace(self.operator_namespace) == home
            ),
            None,
        )
        if other is None:
            labels = (cm.get("metadata") or {}).get("labels") or {}
            if labels.get(ISSUER_KIND_LABEL) and labels.get(ISSUER_LABEL):
                other = f"{labels[ISSUER_KIND_LABEL]}/{labels[ISSUER_LABEL]}"
        holder = (
            f"is the CRL of {other}"
            if other is not None
            else "exists and was not created by the operator for this issuer"
        )
        return (
            f"{where} {holder}; it is left as it is. Set spec.crl.configMapName to a name no "
            f"other issuer or user uses in {home}, or remove it to use the default, one per "
            f"issuer"
        )


def _readable(cm: Mapping[str, Any] | None) -> CertificateRevocationList | None:
    """The CRL a ConfigMap holds, or None when it holds none that parses."""
    text = configmap_text(cm, CRL_KEY)
    if not text:
        return None
    try:
        return load_crl(text)
    except CryptoError:
        return None


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return value if isinstance(value, str) else None
