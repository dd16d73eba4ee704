"""Governance KPIs of an inventory, pure: coverage, owner coverage, credential ages, open
findings by risk and severity, the share of declared permissions used."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from nhi.models.discovered import UNKNOWN
from nhi.models.inventory import Finding
from nhi.policies.inventory import Inventory

#: Credential age buckets, in days (upper bounds; the last one is open).
AGE_BUCKETS = (1, 7, 30, 90, 365)


@dataclass(frozen=True)
class Kpis:
    identities: int
    #: ServiceAccounts used by a workload (system ones excepted), and how many are managed.
    in_use: int
    managed_in_use: int
    #: ServiceAccounts (system ones excepted), and how many have a known owner.
    owned_total: int
    owned: int
    #: Credentials (legacy tokens, TLS certificates) per age bucket: ("1d", n)...("older", n).
    credential_ages: tuple[tuple[str, int], ...] = ()
    findings_by_risk: dict[str, int] = field(default_factory=dict)
    findings_by_severity: dict[str, int] = field(default_factory=dict)
    #: Declared rules of MachineIdentities weighed against audit usage, and how many of
    #: them were used within their identity's unusedAfter.
    rules_weighed: int = 0
    rules_used: int = 0

    @property
    def coverage(self) -> float:
        """Share of ServiceAccounts used by workloads that are managed (1 when none is used)."""
        return self.managed_in_use / self.in_use if self.in_use else 1.0

    @property
    def owner_coverage(self) -> float:
        return self.owned / self.owned_total if self.owned_total else 1.0

    @property
    def permissions_used(self) -> float | None:
        """Share of granted (declared) permissions used; None without usage data."""
        return self.rules_used / self.rules_weighed if self.rules_weighed else None


def age_bucket(age: dt.timedelta) -> str:
    for days in AGE_BUCKETS:
        if age <= dt.timedelta(days=days):
            return f"{days}d"
    return "older"


def credential_ages(inv: Inventory, now: dt.datetime) -> list[dt.timedelta]:
    """The age of every discovered credential: legacy tokens by creation, certificates by
    notBefore."""
    ages = [now - t.meta.created for t in inv.observed.tokens if t.meta.created is not None]
    ages += [now - s.certificate.not_before for s in inv.observed.tls if s.certificate]
    return ages


def compute(inv: Inventory, findings: Sequence[Finding], now: dt.datetime) -> Kpis:
    people = [i for i in inv.identities if i.state != "system"]
    used = [i for i in people if i.workloads]
    buckets = Counter(age_bucket(a) for a in credential_ages(inv, now))
    labels = [f"{d}d" for d in AGE_BUCKETS] + ["older"]
    weighed = [m for m in inv.observed.identities if m.rules_weighed]
    return Kpis(
        identities=len(inv.identities),
        in_use=len(used),
        managed_in_use=sum(1 for i in used if i.state == "managed"),
        owned_total=len(people),
        owned=sum(1 for i in people if i.owner != UNKNOWN),
        credential_ages=tuple((b, buckets.get(b, 0)) for b in labels),
        findings_by_risk=dict(sorted(Counter(f.risk for f in findings).items())),
        findings_by_severity=dict(sorted(Counter(f.severity for f in findings).items())),
        rules_weighed=sum(m.rules_weighed for m in weighed),
        rules_used=sum(m.rules_weighed - len(m.unused_rules) for m in weighed),
    )
