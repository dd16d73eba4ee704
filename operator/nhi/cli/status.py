"""``nhi status``: what a MachineIdentity and its credentials look like, from its object alone.

Pure: takes the object as read from the API server and the current time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from nhi.cli.render import (
    NONE,
    due_in,
    expires_in,
    parse_moment,
    pick,
    render_table,
    short_id,
)
from nhi.models.identity import default_secret_name
from nhi.models.meta import Phase


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in pick(obj, "status", "conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return {}


def _credential(
    declared: Mapping[str, Any], observed: Mapping[str, Any], identity: str, now: dt.datetime
) -> dict[str, Any]:
    name = str(declared.get("name") or observed.get("name") or "")
    not_after = parse_moment(observed.get("notAfter"))
    renewal = parse_moment(observed.get("renewalTime"))
    out: dict[str, Any] = {
        "name": name,
        "type": declared.get("type") or observed.get("type") or "",
        "secretName": observed.get("secretName")
        # Kept in Vault only: no Secret, its copy's path instead.
        or (f"vault:{observed['vaultPath']}" if observed.get("vaultPath") else "")
        or declared.get("secretName")
        or default_secret_name(identity, name),
        "issued": bool(observed),
    }
    if observed.get("vaultPath"):
        out["vaultPath"] = observed["vaultPath"]
    if observed.get("serialNumber"):
        out["serialNumber"] = observed["serialNumber"]
    if observed.get("fingerprint"):
        out["fingerprint"] = observed["fingerprint"]
    if observed.get("issuer"):
        out["issuer"] = observed["issuer"]
    for key in ("notBefore", "notAfter"):
        if observed.get(key):
            out[key] = observed[key]
    out["expiresIn"] = expires_in(not_after, now)
    if observed.get("renewalTime"):
        out["renewalTime"] = observed["renewalTime"]
    out["renewsIn"] = due_in(renewal, now)
    for key in ("lastRotationTime", "rotationCount"):
        if key in observed:
            out[key] = observed[key]
    return out


def summarize(obj: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The structured data ``nhi status -o json`` prints for one identity.

    Credentials are those declared in the spec (in spec order) merged with what status says
    about them; a credential only present in status (being removed) is listed after them.
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name = str(meta.get("name", ""))
    ready = _condition(obj, "Ready")
    observed = {
        str(c.get("name")): c for c in status.get("credentials") or [] if isinstance(c, Mapping)
    }
    declared = [c for c in spec.get("credentials") or [] if isinstance(c, Mapping)]
    names = {str(c.get("name")) for c in declared}
    creds = [_credential(c, observed.get(str(c.get("name")), {}), name, now) for c in declared]
    creds += [_credential({}, c, name, now) for n, c in observed.items() if n not in names]
    out: dict[str, Any] = {
        "namespace": meta.get("namespace", ""),
        "name": name,
        "owner": spec.get("owner", ""),
        "phase": status.get("phase") or Phase.PENDING,
        "ready": ready.get("status") or "Unknown",
        "readyReason": ready.get("reason", ""),
        "readyMessage": ready.get("message", ""),
        "serviceAccount": status.get("serviceAccount")
        or pick(spec, "serviceAccount", "name")
        or name,
        "upToDate": status.get("observedGeneration") == meta.get("generation"),
    }
    for key in ("nextRenewalTime", "expiresAt", "revokedAt", "revocationReason", "revoked"):
        if status.get(key):
            out[key] = status[key]
    out["credentials"] = creds
    return out


STATUS_HEADERS = (
    "Name",
    "Phase",
    "Ready",
    "Owner",
    "Credential",
    "Type",
    "Secret",
    "Serial/Fingerprint",
    "Not After",
    "Expires In",
    "Next Renewal",
)


def status_table(summaries: Sequence[Mapping[str, Any]], all_namespaces: bool = False) -> str:
    """One row per credential (one row for an identity without credentials)."""
    headers = (("Namespace",) if all_namespaces else ()) + STATUS_HEADERS
    rows: list[list[str]] = []
    for s in summaries:
        ident = [str(s["name"]), str(s["phase"]), str(s["ready"]), str(s["owner"])]
        if all_namespaces:
            ident.insert(0, str(s["namespace"]))
        creds = s.get("credentials") or []
        if not creds:
            rows.append([*ident, *([NONE] * 7)])
        for c in creds:
            if s["phase"] in Phase.SETTLED:
                renewal = str(s["phase"]).lower()
            elif c.get("issued"):
                renewal = str(c["renewsIn"])
            else:
                renewal = "not issued"
            ident_value = c.get("serialNumber") or c.get("fingerprint") or ""
            rows.append(
                [
                    *ident,
                    str(c["name"]),
                    str(c["type"]),
                    str(c["secretName"]),
                    short_id(str(ident_value)),
                    str(c.get("notAfter") or NONE),
                    str(c["expiresIn"]),
                    renewal,
                ]
            )
    return render_table(headers, rows)


def not_ready_notes(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per identity that is not Ready, with the condition's reason and message."""
    notes = []
    for s in summaries:
        if s["ready"] != "True" and (s.get("readyReason") or s.get("readyMessage")):
            where = f"{s['namespace']}/{s['name']}"
            notes.append(f"{where}: {s.get('readyReason') or 'NotReady'}: {s.get('readyMessage')}")
    return notes
