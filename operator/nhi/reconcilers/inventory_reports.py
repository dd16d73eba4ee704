"""The inventory's reports (PolicyReports and the ClusterPolicyReport, or OpenReports' Reports
and ClusterReport: one writer per :class:`~nhi.builders.policy_report.ReportFormat`):
written, and only the operator's own ever updated or deleted.

What proves a report is the operator's is the provenance tag of its UID (labels prove
nothing: whoever may write a PolicyReport can set them), the same tag the issuers' ConfigMaps
carry (:mod:`nhi.policies.provenance`). A report is created, then tagged; every later write
is a JSON patch that first tests the UID the tag was checked for, and a deletion carries that
UID as a precondition. A report of the same name that is not provably the operator's is left
alone (logged once): delete it and the operator writes its own.

What exists is known from a label-selected, metadata-only watch of the reports
(:meth:`ReportWriter.changed`); an unchanged report (same results hash) is not written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from nhi import FIELD_MANAGER
from nhi.builders.policy_report import (
    POLICY_REPORT,
    PROVENANCE_PURPOSE,
    REPORT_NAME,
    RESULTS_HASH_ANNOTATION,
    ReportFormat,
    ReportPlan,
)
from nhi.k8s.client import Api, ApiError, Conflict, NotFound, path_for
from nhi.models.issuer import PROVENANCE_ANNOTATION
from nhi.policies.provenance import configmap_origin
from nhi.reconcilers.issuers.provenance import Provenance, ProvenanceKeys

log = logging.getLogger("nhi.inventory")

JSON_PATCH = "application/json-patch+json"
#: Report writes in flight at a time.
WRITE_CONCURRENCY = 16


def purpose(namespace: str, fmt: ReportFormat = POLICY_REPORT) -> str:
    return f"{PROVENANCE_PURPOSE}:{fmt.kind_for(namespace)}:{namespace}"


def report_entry(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the watch keeps of a report: its UID, creation time, tag and results hash."""
    meta = obj.get("metadata") or {}
    if meta.get("name") != REPORT_NAME:
        return None
    annotations = meta.get("annotations") or {}
    keep = {
        k: annotations[k]
        for k in (PROVENANCE_ANNOTATION, RESULTS_HASH_ANNOTATION)
        if k in annotations
    }
    return {
        "metadata": {
            "uid": meta.get("uid", ""),
            "creationTimestamp": meta.get("creationTimestamp", ""),
            "annotations": keep,
        }
    }


class ReportWriter:
    def __init__(
        self, api: Api, provenance: ProvenanceKeys, fmt: ReportFormat = POLICY_REPORT
    ) -> None:
        self.api = api
        self.provenance = provenance
        self.format = fmt
        #: The reports that exist (by namespace, "" for the cluster's), from the watch.
        self.existing: dict[str, dict[str, Any]] = {}
        #: Reports found in the way (not provably ours), with the hash we could not write.
        self._blocked: dict[str, str] = {}
        self.writes = 0

    def changed(self, key: tuple[str, str], old: Any, new: dict[str, Any] | None) -> None:
        if key[1] != REPORT_NAME:
            return
        if new is None:
            self.existing.pop(key[0], None)
            self._blocked.pop(key[0], None)
        else:
            self.existing[key[0]] = new

    def _purpose(self, namespace: str) -> str:
        return purpose(namespace, self.format)

    def _ours(self, namespace: str, entry: Mapping[str, Any], prov: Provenance) -> bool:
        return configmap_origin(entry, key=prov.key, purpose=self._purpose(namespace)) == "ours"

    async def sync(self, desired: Mapping[str, ReportPlan]) -> int:
        """Make the reports what ``desired`` says (by namespace); delete the operator's own
        reports of namespaces no longer in it. Returns the writes made. Up to
        ``WRITE_CONCURRENCY`` requests at a time (a first run writes one per namespace)."""
        prov = await self.provenance.get()
        slots = asyncio.Semaphore(WRITE_CONCURRENCY)

        async def write(namespace: str, plan: ReportPlan) -> int:
            async with slots:
                try:
                    return await self._write(namespace, plan, prov)
                except ApiError as err:
                    log.warning(
                        "could not write the inventory report",
                        extra={"namespace": namespace or "(cluster)", "error": str(err)[:300]},
                    )
                    return 0

        async def delete(namespace: str, uid: str) -> int:
            async with slots:
                try:
                    kind = self.format.kind_for(namespace)
                    return int(await self.api.delete(kind, namespace or None, REPORT_NAME, uid=uid))
                except ApiError as err:
                    log.warning(
                        "could not delete the inventory report",
                        extra={"namespace": namespace or "(cluster)", "error": str(err)[:300]},
                    )
                    return 0
                finally:
                    self.existing.pop(namespace, None)

        gone = [
            (namespace, str(entry["metadata"]["uid"]))
            for namespace, entry in self.existing.items()
            if namespace not in desired and self._ours(namespace, entry, prov)
        ]
        done = await asyncio.gather(
            *(write(ns, plan) for ns, plan in desired.items()),
            *(delete(ns, uid) for ns, uid in gone),
        )
        writes = sum(done)
        self.writes += writes
        return writes

    async def _write(self, namespace: str, plan: ReportPlan, prov: Provenance) -> int:
        want = plan.hash
        entry = self.existing.get(namespace)
        if entry is None:
            if self._blocked.get(namespace) == want:
                return 0
            return await self._create(namespace, plan, prov)
        if (entry["metadata"].get("annotations") or {}).get(RESULTS_HASH_ANNOTATION) == want:
            return 0  # nothing to write (whoever's it is)
        if not self._ours(namespace, entry, prov):
            self._in_the_way(namespace, want)
            return 0
        return await self._update(namespace, entry, plan)

    async def _create(self, namespace: str, plan: ReportPlan, prov: Provenance) -> int:
        """Create the report and tag it as the operator's; kept as the watch will show it."""
        want = plan.hash
        kind = self.format.kind_for(namespace)
        body = plan.build()
        try:
            # Strict: a field the installed CRD does not know is refused, not dropped.
            created = await self.api.request(
                "POST",
                path_for(kind, namespace or None),
                body=body,
                params={"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"},
                kind=kind,
                name=REPORT_NAME,
            )
        except Conflict:
            self._in_the_way(namespace, want)
            return 0
        uid = str(created["metadata"]["uid"])
        await self._tag(kind, namespace, uid, prov)
        self.existing[namespace] = (
            report_entry(
                {
                    "metadata": {
                        **created["metadata"],
                        "annotations": {
                            **body["metadata"]["annotations"],
                            PROVENANCE_ANNOTATION: prov.tag(uid, self._purpose(namespace)),
                        },
                    }
                }
            )
            or {}
        )
        return 1

    async def _update(self, namespace: str, entry: dict[str, Any], plan: ReportPlan) -> int:
        """Patch the operator's own report; the patch first tests the UID its tag proved."""
        want = plan.hash
        kind = self.format.kind_for(namespace)
        body = plan.build()
        uid = str(entry["metadata"]["uid"])
        patch = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            # add: replaces a member, or puts back one someone removed.
            {"op": "add", "path": "/results", "value": body["results"]},
            {"op": "add", "path": "/summary", "value": body["summary"]},
            {
                "op": "add",
                "path": "/metadata/annotations/" + RESULTS_HASH_ANNOTATION.replace("/", "~1"),
                "value": want,
            },
        ]
        try:
            await self.api.request(
                "PATCH",
                path_for(kind, namespace or None, REPORT_NAME),
                body=patch,
                params={"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"},
                content_type=JSON_PATCH,
                kind=kind,
                name=REPORT_NAME,
            )
        except NotFound:
            self.existing.pop(namespace, None)  # gone meanwhile: created at the next run
            return 0
        entry["metadata"].setdefault("annotations", {})[RESULTS_HASH_ANNOTATION] = want
        return 1

    async def _tag(self, kind: str, namespace: str, uid: str, prov: Provenance) -> None:
        path = "/metadata/annotations/" + PROVENANCE_ANNOTATION.replace("/", "~1")
        patch = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "add", "path": path, "value": prov.tag(uid, self._purpose(namespace))},
        ]
        await self.api.patch(kind, namespace or None, REPORT_NAME, patch, content_type=JSON_PATCH)

    def _in_the_way(self, namespace: str, want: str) -> None:
        if namespace not in self._blocked:
            log.warning(
                "a report of that name is not the operator's: left alone",
                extra={
                    "namespace": namespace or "(cluster)",
                    "report": f"{self.format.kind_for(namespace)}/{REPORT_NAME}",
                },
            )
        self._blocked[namespace] = want
