"""``nhi history``: an identity's Events, oldest first, and what its status says of rotations.

Pure: takes the identity (or None when it is gone) and the Events about it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from nhi.cli.render import NONE, ago, parse_moment, pick, render_kv, render_table
from nhi.models.meta import Phase

_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


def event_time(event: Mapping[str, Any]) -> str:
    """When an Event last happened: lastTimestamp, else eventTime, firstTimestamp, creation."""
    for value in (
        event.get("lastTimestamp"),
        event.get("eventTime"),
        pick(event, "series", "lastObservedTime"),
        event.get("firstTimestamp"),
        pick(event, "metadata", "creationTimestamp"),
    ):
        if isinstance(value, str) and value:
            return value
    return ""


def _order(event: Mapping[str, Any]) -> tuple[dt.datetime, int, str]:
    rv = str(pick(event, "metadata", "resourceVersion") or "")
    return (
        parse_moment(event_time(event)) or _EPOCH,
        int(rv) if rv.isdigit() else 0,
        str(pick(event, "metadata", "name") or ""),
    )


def entries(events: Iterable[Mapping[str, Any]], uid: str | None = None) -> list[dict[str, Any]]:
    """Events as history entries sorted by time (then by write order).

    With ``uid``, Events about an earlier object of the same name are left out.
    """
    chosen = [
        e
        for e in events
        if not uid
        or not pick(e, "involvedObject", "uid")
        or pick(e, "involvedObject", "uid") == uid
    ]
    out = []
    for e in sorted(chosen, key=_order):
        out.append(
            {
                "time": event_time(e),
                "type": e.get("type", ""),
                "reason": e.get("reason", ""),
                "message": e.get("message", ""),
                "count": int(e.get("count") or pick(e, "series", "count") or 1),
                "source": e.get("reportingComponent") or pick(e, "source", "component") or "",
            }
        )
    return out


def summarize(
    namespace: str,
    name: str,
    identity: Mapping[str, Any] | None,
    events: Iterable[Mapping[str, Any]],
    grants: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The structured data ``nhi history -o json`` prints."""
    status: Mapping[str, Any] = (identity or {}).get("status") or {}
    uid = pick(identity, "metadata", "uid")
    out: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "exists": identity is not None,
        "createdAt": pick(identity, "metadata", "creationTimestamp"),
        "phase": status.get("phase"),
        "credentials": [
            {
                "name": c.get("name", ""),
                "type": c.get("type", ""),
                "rotationCount": c.get("rotationCount", 0),
                "lastRotationTime": c.get("lastRotationTime"),
            }
            for c in status.get("credentials") or []
            if isinstance(c, Mapping)
        ],
        "revokedAt": status.get("revokedAt"),
        "revocationReason": status.get("revocationReason"),
        "revoked": list(status.get("revoked") or []),
        "events": entries(events, str(uid) if uid else None),
        "grants": [
            {
                "name": pick(g, "metadata", "name"),
                "phase": pick(g, "status", "phase") or "Pending",
                "requester": pick(g, "spec", "requester"),
                "approvedBy": pick(g, "status", "approvedBy"),
                "activatedAt": pick(g, "status", "activatedAt"),
                "endedAt": pick(g, "status", "endedAt"),
                "reason": pick(g, "spec", "reason"),
            }
            for g in grants
            if pick(g, "spec", "identityRef", "name") == name
        ],
    }
    return out


def render_history(h: Mapping[str, Any], now: dt.datetime) -> str:
    """Events as a table, then the rotation and revocation facts from status."""
    parts = [_render_head(h, now), *_render_credentials(h, now)]
    if h.get("grants"):
        rows = [
            [
                str(g["name"]),
                str(g["phase"]),
                str(g.get("requester") or NONE),
                str(g.get("approvedBy") or NONE),
                str(g.get("activatedAt") or NONE),
                str(g.get("endedAt") or NONE),
            ]
            for g in h["grants"]
        ]
        headers = ("Access Grant", "Phase", "Requester", "Approver", "Activated", "Ended")
        parts.append(render_table(headers, rows))
    if h["events"]:
        rows = [
            [
                str(e["time"] or NONE),
                str(e["type"]),
                str(e["reason"]),
                str(e["message"]) + (f" (x{e['count']})" if e["count"] > 1 else ""),
            ]
            for e in h["events"]
        ]
        parts.append(render_table(("Time", "Type", "Reason", "Message"), rows))
    else:
        parts.append("No events (the API server keeps Events for about an hour by default).")
    return "\n\n".join(parts)


def _render_head(h: Mapping[str, Any], now: dt.datetime) -> str:
    """The identity: whether it exists, when it was created, its phase, its revocation."""
    head: list[tuple[str, Any]] = [("Identity", f"{h['namespace']}/{h['name']}")]
    if not h["exists"]:
        head.append(("Status", "not found (deleted?); only its remaining Events are shown"))
    else:
        created = parse_moment(h.get("createdAt"))
        head.append(("Created", f"{h.get('createdAt')} ({ago(created, now)})"))
        head.append(("Phase", h.get("phase") or Phase.PENDING))
    if h.get("revokedAt") or h.get("revocationReason"):
        head.append(("Revoked At", h.get("revokedAt")))
        head.append(("Revocation Reason", h.get("revocationReason")))
    return render_kv(head)


def _render_credentials(h: Mapping[str, Any], now: dt.datetime) -> list[str]:
    """The credentials' rotations and the revoked values, as tables (none when empty)."""
    parts: list[str] = []
    if h["credentials"]:
        rows = [
            [
                str(c["name"]),
                str(c["type"]),
                str(c["rotationCount"]),
                str(c.get("lastRotationTime") or NONE),
                ago(parse_moment(c.get("lastRotationTime")), now),
            ]
            for c in h["credentials"]
        ]
        parts.append(
            render_table(("Credential", "Type", "Rotations", "Last Rotation", "Age"), rows)
        )
    if h.get("revoked"):
        rows = [
            [
                str(r.get("credential", "")),
                str(r.get("serialNumber") or r.get("fingerprint") or NONE),
                str(r.get("revokedAt") or NONE),
            ]
            for r in h["revoked"]
        ]
        parts.append(render_table(("Revoked Credential", "Serial/Fingerprint", "Revoked At"), rows))
    return parts
