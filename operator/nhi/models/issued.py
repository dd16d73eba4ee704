"""What a credential Secret's annotations say about the value it holds (never the value).

The operator's whole rotation schedule is read back from these annotations, so a restart
sees exactly what it saw before and re-issues nothing that is still valid.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from nhi.models.duration import parse_time, rfc3339

PREFIX = "nhi.dev/"
A_NOT_BEFORE = PREFIX + "not-before"
A_NOT_AFTER = PREFIX + "not-after"
A_RENEWAL = PREFIX + "renewal-time"
A_ISSUED_AT = PREFIX + "issued-at"
A_COUNT = PREFIX + "rotation-count"
A_SERIAL = PREFIX + "serial"
A_FINGERPRINT = PREFIX + "fingerprint"
A_SPEC_HASH = PREFIX + "spec-hash"
A_ISSUER = PREFIX + "issuer"
A_CA_FINGERPRINT = PREFIX + "ca-fingerprint"
A_PREVIOUS_NOT_AFTER = PREFIX + "previous-not-after"
A_RENEW_HANDLED = PREFIX + "renew-request-handled"
A_CREDENTIAL_ID = PREFIX + "credential-id"


@dataclass(frozen=True)
class Issued:
    """What the credential Secret's annotations say about the value it holds."""

    not_before: dt.datetime
    not_after: dt.datetime
    renewal_time: dt.datetime
    issued_at: dt.datetime
    rotation_count: int
    spec_hash: str
    serial: str = ""
    fingerprint: str = ""
    issuer: str = ""
    ca_fingerprint: str = ""
    previous_not_after: dt.datetime | None = None
    #: The value of the identity's renew-requested-at annotation this value answered.
    renew_handled: str = ""
    #: ServiceAccountToken: the ID the API server's audit events name the token by (JTI=...).
    credential_id: str = ""

    @classmethod
    def from_annotations(cls, ann: Mapping[str, str]) -> Issued | None:
        try:
            prev = ann.get(A_PREVIOUS_NOT_AFTER)
            return cls(
                not_before=parse_time(ann[A_NOT_BEFORE]),
                not_after=parse_time(ann[A_NOT_AFTER]),
                renewal_time=parse_time(ann[A_RENEWAL]),
                issued_at=parse_time(ann[A_ISSUED_AT]),
                rotation_count=int(ann.get(A_COUNT, "0")),
                spec_hash=ann.get(A_SPEC_HASH, ""),
                serial=ann.get(A_SERIAL, ""),
                fingerprint=ann.get(A_FINGERPRINT, ""),
                issuer=ann.get(A_ISSUER, ""),
                ca_fingerprint=ann.get(A_CA_FINGERPRINT, ""),
                previous_not_after=parse_time(prev) if prev else None,
                renew_handled=ann.get(A_RENEW_HANDLED, ""),
                credential_id=ann.get(A_CREDENTIAL_ID, ""),
            )
        except (KeyError, ValueError):
            return None

    def annotations(self) -> dict[str, str]:
        out = {
            A_NOT_BEFORE: rfc3339(self.not_before),
            A_NOT_AFTER: rfc3339(self.not_after),
            A_RENEWAL: rfc3339(self.renewal_time),
            A_ISSUED_AT: rfc3339(self.issued_at),
            A_COUNT: str(self.rotation_count),
            A_SPEC_HASH: self.spec_hash,
        }
        if self.serial:
            out[A_SERIAL] = self.serial
        if self.fingerprint:
            out[A_FINGERPRINT] = self.fingerprint
        if self.issuer:
            out[A_ISSUER] = self.issuer
        if self.ca_fingerprint:
            out[A_CA_FINGERPRINT] = self.ca_fingerprint
        if self.previous_not_after is not None:
            out[A_PREVIOUS_NOT_AFTER] = rfc3339(self.previous_not_after)
        if self.renew_handled:
            out[A_RENEW_HANDLED] = self.renew_handled
        if self.credential_id:
            out[A_CREDENTIAL_ID] = self.credential_id
        return out
