"""IdentityIssuer / ClusterIdentityIssuer: CA material, signers, CRLs and trust bundles.

Split by the state each part owns:

- :mod:`.controller`: one reconcile per issuer (``reconcile(key)`` returns when to look
  again), run by a :class:`nhi.runtime.controller.Controller` like every kind, the issuer's
  lock, the ClusterIdentityIssuer finalizer and the status (:mod:`.status`); issuer bodies
  come from the runtime's watch caches (:mod:`.index`).
- :mod:`.sources`: one CA source strategy per kind of ``spec`` (selfSigned keeps the last
  root to restore it; ca reads a Secret); :mod:`.converge` turns its material into a signer.
- :mod:`.crl`: each issuer's CRL ConfigMap and what this process published last.
- :mod:`.distribution` and :mod:`.trust_bundles`: the roots each issuer gives the shared
  trust bundle ConfigMaps, and writing them; :mod:`.provenance`: the key of the tags that
  prove the operator made a ConfigMap.
- :mod:`.signers`: what identities read (read-only; prepared by the controller).

The rules (when to rotate a root, re-sign a CRL, look again) are pure functions in
:mod:`nhi.policies.ca`; the objects are built by :mod:`nhi.builders.issuer`.

Nothing here logs or reports key material: messages name Secrets, rules, subjects, serials
and fingerprints only.
"""

from __future__ import annotations

from nhi.models.issuer import IssuerKey
from nhi.reconcilers.issuers.service import IssuerService
from nhi.reconcilers.issuers.signers import IssuerNotReady, RemoteCA, Signer
from nhi.reconcilers.issuers.status import IssuerOutcome, Result, compute_status

__all__ = [
    "IssuerKey",
    "IssuerNotReady",
    "IssuerOutcome",
    "IssuerService",
    "RemoteCA",
    "Result",
    "Signer",
    "compute_status",
]
