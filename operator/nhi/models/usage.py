"""What a ServiceAccount did, read from the API server's audit events (``audit.k8s.io/v1``).

Pure: an EventList batch is parsed in full before anything is counted (a malformed batch is
refused whole, never half applied), and only the metadata of an event is read: the request
and response bodies, whatever audit level sent them, are never looked at or kept.

A :class:`UsageBook` is the usage of one ServiceAccount (managed by a MachineIdentity or not),
keyed by its namespace and name so that it joins the inventory's identities. It is bounded:
at most :data:`MAX_ENTRIES` accesses and :data:`MAX_CREDENTIALS` credentials.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SA_PREFIX = "system:serviceaccount:"
AUDIT_API_VERSION = "audit.k8s.io/v1"
#: The stage that says a request was answered (watches also send ResponseStarted: ignored).
COUNTED_STAGE = "ResponseComplete"
#: Most events accepted in one batch (kube-apiserver sends at most 400 by default).
MAX_BATCH_EVENTS = 10_000
#: Most distinct accesses kept per ServiceAccount; beyond it, names are folded (see record).
MAX_ENTRIES = 512
#: Most credentials kept per ServiceAccount (the least recently used one goes first).
MAX_CREDENTIALS = 32
#: Longest string kept from an event (names, resources, credential IDs).
MAX_FIELD = 253
#: A resource name folded away when a book is full: "some name of this resource".
ANY_NAME = "*"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
DECISION_ANNOTATION = "authorization.k8s.io/decision"
ISSUED_CREDENTIAL_ID = "authentication.kubernetes.io/issued-credential-id"


class AuditError(ValueError):
    """The batch is not an audit.k8s.io/v1 EventList; the message says where."""


@dataclass(frozen=True, order=True, slots=True)
class Access:
    """One kind of request: what, where and how."""

    api_group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    verb: str

    @property
    def rbac_resource(self) -> str:
        """The resource as an RBAC rule names it (``pods/log``)."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    @property
    def behaviour(self) -> Behaviour:
        """What kind of request, wherever and on whatever object."""
        return (self.api_group, self.rbac_resource, self.verb)


Behaviour = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


@dataclass(frozen=True, slots=True)
class Observation:
    """One answered request of a ServiceAccount."""

    audit_id: str
    namespace: str  # the ServiceAccount's
    service_account: str
    access: Access
    at: dt.datetime
    credential_id: str = ""
    pod: str = ""
    denied: bool = False
    #: The request's source address (the first of sourceIPs).
    source_ip: str = ""


@dataclass(frozen=True, slots=True)
class Mint:
    """A ServiceAccount token minted by a TokenRequest: where a credential came from."""

    credential_id: str
    namespace: str  # the ServiceAccount's
    service_account: str
    #: Who asked (the impersonated user when the request impersonated one).
    minted_by: str
    at: dt.datetime
    source_ip: str = ""
    user_agent: str = ""

    @property
    def by_person(self) -> bool:
        """Minted by a person (kubectl create token), not by a component of the cluster: no
        ``system:`` user (nodes, controllers, ServiceAccounts) asked for it."""
        return bool(self.minted_by) and not self.minted_by.startswith("system:")


@dataclass(frozen=True, slots=True)
class Batch:
    observations: list[Observation]
    mints: list[Mint]


@dataclass(slots=True)
class Seen:
    first: int  # epoch seconds
    last: int
    count: int = 1

    def add(self, at: int, count: int = 1) -> None:
        self.first = min(self.first, at)
        self.last = max(self.last, at)
        self.count += count


@dataclass(slots=True)
class CredentialUse:
    pod: str
    seen: Seen


@dataclass
class UsageBook:
    """The usage of one ServiceAccount."""

    namespace: str
    service_account: str
    entries: dict[Access, Seen] = field(default_factory=dict)
    credentials: dict[str, CredentialUse] = field(default_factory=dict)
    #: Accesses whose name was folded to ANY_NAME, or dropped, because the book was full.
    folded: int = 0
    denied: int = 0
    #: When the ServiceAccount was first seen (epoch seconds; 0: never): its learning window
    #: starts there.
    since: int = 0
    #: Every (group, resource, verb) it was ever seen using: its behaviour (derived from the
    #: entries; kept when an entry is folded or dropped).
    behaviours: set[Behaviour] = field(default_factory=set)

    def record(self, obs: Observation) -> bool:
        """Count one observation; True when it is a behaviour never seen before (a verb on a
        group and resource this ServiceAccount never used)."""
        at = int(obs.at.timestamp())
        if obs.denied:
            self.denied += 1
            return False
        self.since = min(self.since, at) if self.since else at
        behaviour = obs.access.behaviour
        novel = behaviour not in self.behaviours
        if novel:
            self.behaviours.add(behaviour)
        self._count(obs, at)
        return novel

    def _count(self, obs: Observation, at: int) -> None:
        access = obs.access
        if access not in self.entries and len(self.entries) >= MAX_ENTRIES:
            # Full: keep the evidence of use, coarser (any name), rather than forget it.
            self.folded += 1
            access = dataclasses.replace(access, name=ANY_NAME) if access.name else access
            if access not in self.entries:
                oldest = min(self.entries, key=lambda a: self.entries[a].last)
                del self.entries[oldest]
        seen = self.entries.get(access)
        if seen is None:
            self.entries[access] = Seen(at, at)
        else:
            seen.add(at)
        if obs.credential_id:
            self._credential(obs.credential_id, obs.pod, at)

    def _credential(self, cid: str, pod: str, at: int) -> None:
        use = self.credentials.get(cid)
        if use is not None:
            use.seen.add(at)
            use.pod = use.pod or pod
            return
        if len(self.credentials) >= MAX_CREDENTIALS:
            oldest = min(self.credentials, key=lambda c: self.credentials[c].seen.last)
            del self.credentials[oldest]
        self.credentials[cid] = CredentialUse(pod, Seen(at, at))

    def merge(self, other: UsageBook) -> None:
        """Add another book's counts (e.g. the persisted one into what arrived since)."""
        for access, seen in other.entries.items():
            mine = self.entries.get(access)
            if mine is None:
                self.entries[access] = Seen(seen.first, seen.last, seen.count)
            else:
                mine.add(seen.first, seen.count)
                mine.last = max(mine.last, seen.last)
        for cid, use in other.credentials.items():
            if cid not in self.credentials:
                self.credentials[cid] = CredentialUse(use.pod, dataclasses.replace(use.seen))
        self.folded += other.folded
        self.denied += other.denied
        if other.since and (not self.since or other.since < self.since):
            self.since = other.since
        self.behaviours |= other.behaviours


# ------------------------------------------------------------------------------ parsing


def _text(value: Any, where: str, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise AuditError(f"{where}: expected a string")
    if len(value) > MAX_FIELD:
        raise AuditError(f"{where}: longer than {MAX_FIELD} characters")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AuditError(f"{where}: expected an object")
    return value


def _first(extra: Mapping[str, Any], key: str, where: str) -> str:
    values = extra.get(key)
    if not values:
        return ""
    if not isinstance(values, list):
        raise AuditError(f"{where}.{key}: expected a list")
    return _text(values[0], f"{where}.{key}[0]")


def _timestamp(value: Any, where: str) -> dt.datetime:
    text = _text(value, where, required=True)
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AuditError(f"{where}: not an RFC 3339 time") from None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def parse_event(event: Any, where: str) -> Observation | None:
    """One event; None when it is not an answered resource request of a ServiceAccount."""
    return parse_one(event, where)[0]


def _mint(
    ev: Mapping[str, Any], ref: Mapping[str, Any], user: Mapping[str, Any], where: str
) -> Mint | None:
    """The token a TokenRequest minted, if the event is one (its issued credential ID)."""
    annotations = _object(ev.get("annotations"), f"{where}.annotations")
    cid = _text(annotations.get(ISSUED_CREDENTIAL_ID), f"{where}.annotations")
    if not cid or ref.get("resource") != "serviceaccounts" or ref.get("subresource") != "token":
        return None
    impersonated = _object(ev.get("impersonatedUser"), f"{where}.impersonatedUser")
    return Mint(
        credential_id=cid,
        namespace=_text(ref.get("namespace"), f"{where}.objectRef.namespace"),
        service_account=_text(ref.get("name"), f"{where}.objectRef.name"),
        minted_by=_text(
            impersonated.get("username") or user.get("username"), f"{where}.user.username"
        ),
        at=_timestamp(ev.get("stageTimestamp") or ev.get("requestReceivedTimestamp"), where),
        source_ip=_source_ip(ev, where),
        user_agent=_text(ev.get("userAgent"), f"{where}.userAgent")[:128],
    )


def parse_one(event: Any, where: str) -> tuple[Observation | None, Mint | None]:
    """One event: the request of a ServiceAccount it records, and the token it minted."""
    ev = _object(event, where)
    audit_id = _text(ev.get("auditID"), f"{where}.auditID", required=True)
    stage = _text(ev.get("stage"), f"{where}.stage")
    user = _object(ev.get("user"), f"{where}.user")
    username = _text(user.get("username"), f"{where}.user.username")
    verb = _text(ev.get("verb"), f"{where}.verb")
    ref = _object(ev.get("objectRef"), f"{where}.objectRef")
    if stage != COUNTED_STAGE or not ref:
        return None, None
    mint = _mint(ev, ref, user, where) if verb == "create" else None
    if not username.startswith(SA_PREFIX):
        return None, mint
    namespace, _, name = username.removeprefix(SA_PREFIX).partition(":")
    if not namespace or not name:
        return None, mint
    extra = _object(user.get("extra"), f"{where}.user.extra")
    annotations = _object(ev.get("annotations"), f"{where}.annotations")
    at = _timestamp(ev.get("stageTimestamp") or ev.get("requestReceivedTimestamp"), where)
    # Interned: the same few groups, resources, verbs and namespaces recur in every book.
    access = Access(
        api_group=sys.intern(_text(ref.get("apiGroup"), f"{where}.objectRef.apiGroup")),
        resource=sys.intern(_text(ref.get("resource"), f"{where}.objectRef.resource")),
        subresource=sys.intern(_text(ref.get("subresource"), f"{where}.objectRef.subresource")),
        namespace=sys.intern(_text(ref.get("namespace"), f"{where}.objectRef.namespace")),
        name=_text(ref.get("name"), f"{where}.objectRef.name"),
        verb=sys.intern(verb),
    )
    obs = Observation(
        audit_id=audit_id,
        namespace=namespace,
        service_account=name,
        access=access,
        at=at,
        credential_id=_first(extra, EXTRA_CREDENTIAL_ID, f"{where}.user.extra"),
        pod=_first(extra, EXTRA_POD_NAME, f"{where}.user.extra"),
        denied=annotations.get(DECISION_ANNOTATION) == "forbid",
        source_ip=_source_ip(ev, where),
    )
    return obs, mint


def _source_ip(ev: Mapping[str, Any], where: str) -> str:
    ips = ev.get("sourceIPs")
    return _text(ips[0], f"{where}.sourceIPs[0]") if isinstance(ips, list) and ips else ""


def parse_event_list(data: Any) -> list[Observation]:
    """Every counted observation of a decoded EventList (see :func:`parse_batch`)."""
    return parse_batch(data).observations


def parse_batch(data: Any) -> Batch:
    """Every counted observation and minted token of a decoded EventList;
    :class:`AuditError` if any part of it is malformed (then nothing of it is counted)."""
    body = _object(data, "body")
    if body.get("apiVersion") != AUDIT_API_VERSION or body.get("kind") != "EventList":
        raise AuditError(f"body: expected kind EventList of apiVersion {AUDIT_API_VERSION}")
    items = body.get("items")
    if items is None:
        return Batch([], [])
    if not isinstance(items, list):
        raise AuditError("items: expected a list")
    if len(items) > MAX_BATCH_EVENTS:
        raise AuditError(f"items: more than {MAX_BATCH_EVENTS} events in one batch")
    out, mints = [], []
    for i, item in enumerate(items):
        obs, mint = parse_one(item, f"items[{i}]")
        if obs is not None:
            out.append(obs)
        if mint is not None:
            mints.append(mint)
    return Batch(out, mints)


# ------------------------------------------------------------------------------ persistence


def _access_row(a: Access) -> list[str]:
    return [a.api_group, a.resource, a.subresource, a.namespace, a.name, a.verb]


def book_to_json(book: UsageBook) -> dict[str, Any]:
    """A compact, JSON-ready form of a book (the ConfigMap's value)."""
    return {
        "serviceAccount": {"namespace": book.namespace, "name": book.service_account},
        "entries": [
            [
                a.api_group,
                a.resource,
                a.subresource,
                a.namespace,
                a.name,
                a.verb,
                s.first,
                s.last,
                s.count,
            ]
            for a, s in sorted(book.entries.items())
        ],
        "credentials": [
            [cid, u.pod, u.seen.first, u.seen.last, u.seen.count]
            for cid, u in sorted(book.credentials.items())
        ],
        "folded": book.folded,
        "denied": book.denied,
        "since": book.since,
    }


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AuditError(f"{where}: expected a non-negative integer")
    return value


def book_from_json(data: Any) -> UsageBook:
    """The inverse of :func:`book_to_json`; :class:`AuditError` on anything else."""
    body = _object(data, "usage")
    sa = _object(body.get("serviceAccount"), "usage.serviceAccount")
    book = UsageBook(
        _text(sa.get("namespace"), "usage.serviceAccount.namespace", required=True),
        _text(sa.get("name"), "usage.serviceAccount.name", required=True),
        folded=_int(body.get("folded", 0), "usage.folded"),
        denied=_int(body.get("denied", 0), "usage.denied"),
        since=_int(body.get("since", 0), "usage.since"),
    )
    for i, row in enumerate(_rows(body.get("entries"), 9, "usage.entries")):
        where = f"usage.entries[{i}]"
        access = Access(*(_text(v, where, required=True) for v in row[:6]))
        book.entries[access] = Seen(*(_int(v, where) for v in row[6:]))
        book.behaviours.add(access.behaviour)
    for i, row in enumerate(_rows(body.get("credentials"), 5, "usage.credentials")):
        where = f"usage.credentials[{i}]"
        seen = Seen(*(_int(v, where) for v in row[2:]))
        book.credentials[_text(row[0], where, True)] = CredentialUse(_text(row[1], where), seen)
    return book


def _rows(value: Any, width: int, where: str) -> Iterable[list[Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise AuditError(f"{where}: expected a list of at most {MAX_ENTRIES} rows")
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != width:
            raise AuditError(f"{where}[{i}]: expected {width} values")
    return value
