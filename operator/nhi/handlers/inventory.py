"""Discovery: the inventory controller, fed by watches of its own (opt-in, ``--discovery``).

Its watch caches (a :class:`~nhi.runtime.caches.WatchCaches` of their own, over the
namespaces discovered) keep one record per object (:mod:`nhi.models.inventory`, RBAC's in
:mod:`nhi.models.inventory_rbac`): every ServiceAccount, workload, Role, ClusterRole and
binding with a ServiceAccount subject; legacy token Secrets and TLS Secrets, each by a watch
of that type only (a field selector), each reduced at once to its metadata (a TLS Secret's
certificate parsed to its subject, issuer and validity; the Secret's data is dropped before
the record is kept). The MachineIdentities come from the operator's own watch.

Every change queues the one key of the inventory, ``interval`` seconds later (changes
meanwhile fold into the same run); the run is :class:`InventoryReconciler`'s. Each report
format (PolicyReport, OpenReports) is a :class:`ReportSink`: its reports' own watch starts once
its CRDs are found; without any, only metrics and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nhi.builders.policy_report import (
    FORMATS,
    POLICY_REPORT,
    REPORT_KIND_VALUE,
    REPORT_LABEL,
    ReportFormat,
)
from nhi.crypto.metadata import tls_secret_certificate
from nhi.k8s.client import Api, ApiError, NotFound
from nhi.models.inventory import (
    OPAQUE_TYPE,
    TLS_TYPE,
    TOKEN_TYPE,
    ManagedIdentity,
    TlsSecretInfo,
    WorkloadInfo,
    managed_identity_from_body,
    meta_from_body,
    opaque_secret_from_body,
    service_account_from_body,
    token_secret_from_body,
    workload_from_body,
)
from nhi.models.inventory_config import InventoryConfig
from nhi.models.inventory_rbac import binding_from_body, role_from_body
from nhi.models.workload import WORKLOAD_KINDS
from nhi.policies.inventory import Observed
from nhi.reconcilers.inventory import InventoryReconciler
from nhi.reconcilers.inventory_reports import ReportWriter, report_entry
from nhi.reconcilers.issuers.provenance import ProvenanceKeys
from nhi.runtime.caches import WatchCaches
from nhi.runtime.clock import Clock
from nhi.runtime.controller import Controller, Result
from nhi.runtime.informer import Informer, Key
from nhi.runtime.store import unpack

log = logging.getLogger("nhi.inventory")

KEY: Key = ("", "inventory")
#: How long a run waits for the reports' first listing before it goes on without them.
REPORTS_WAIT = 30.0
REPORT_SELECTOR = f"{REPORT_LABEL}={REPORT_KIND_VALUE}"


def tls_record(obj: Mapping[str, Any]) -> TlsSecretInfo:
    """A TLS Secret's record: its certificate's metadata; its data is not kept."""
    cert, problem = tls_secret_certificate(obj.get("data"))
    return TlsSecretInfo(meta=meta_from_body(obj), certificate=cert, problem=problem)


def _role(kind: str) -> Any:
    return lambda obj: role_from_body(kind, obj)


def _binding(kind: str) -> Any:
    return lambda obj: binding_from_body(kind, obj)


def _workload(kind: str) -> Any:
    return lambda obj: workload_from_body(kind, obj)


def _values(informers: Sequence[Informer]) -> list[Any]:
    return [v for i in informers for v in i.objects.values()]


class ReportSink:
    """One report format: whether its CRDs are installed (asked until answered), the watch of
    the operator's own reports of that format, and their writer once that watch has listed."""

    def __init__(
        self,
        api: Api,
        clock: Clock,
        namespaces: Sequence[str],
        provenance: ProvenanceKeys,
        fmt: ReportFormat,
    ) -> None:
        self.api = api
        self.format = fmt
        self.caches = WatchCaches(api, clock, namespaces)
        self.writer = ReportWriter(api, provenance, fmt)
        self._checked = False
        self._waited = False

    async def ready(self) -> bool:
        """Whether reports of this format can be written now. Never holds the inventory:
        without the CRDs (or while the reports cannot be listed, RBAC missing), False."""
        fmt = self.format
        if not self._checked:
            try:
                await self.api.request("GET", f"/apis/{fmt.api_version}")
            except NotFound:
                self._checked = True
                # The policy working group's reports are the ones expected; OpenReports only
                # where installed.
                level = logging.WARNING if fmt is POLICY_REPORT else logging.INFO
                log.log(
                    level,
                    "the report CRDs are not installed: no reports of that kind",
                    extra={"reports": fmt.name},
                )
                return False
            except ApiError as err:  # asked again at the next run
                log.warning(
                    "could not look for the report CRDs",
                    extra={"reports": fmt.name, "error": str(err)},
                )
                return False
            self._checked = True
            for kind, namespaced in ((fmt.namespaced_kind, True), (fmt.cluster_kind, False)):
                self.caches.add(
                    kind,
                    namespaced=namespaced,
                    label_selector=REPORT_SELECTOR,
                    metadata_only=True,
                    transform=report_entry,
                    on_change=self.writer.changed,
                )
            self.caches.start()
        if not self.caches.informers:
            return False
        synced = self.caches.synced
        if not synced.is_set() and not self._waited:
            self._waited = True  # once: later runs do not wait for them
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(synced.wait()), REPORTS_WAIT)
        if not synced.is_set():
            log.warning(
                "the operator's reports cannot be listed yet (RBAC?): none written",
                extra={"reports": fmt.name},
            )
            return False
        return True


class Discovery:
    def __init__(
        self,
        api: Api,
        clock: Clock,
        *,
        namespaces: Sequence[str],
        config: InventoryConfig,
        interval: float,
        provenance: ProvenanceKeys,
        identities_ready: asyncio.Event,
        active: asyncio.Event | None = None,
    ) -> None:
        self.api = api
        self.clock = clock
        self.namespaces = tuple(namespaces)
        self.interval = interval
        self.identities_ready = identities_ready
        self.caches = WatchCaches(api, clock, namespaces)
        self.sinks = [ReportSink(api, clock, namespaces, provenance, fmt) for fmt in FORMATS]
        self.reconciler = InventoryReconciler(config, clock.now)
        self.controller: Controller[Key] = Controller(
            "Inventory",
            self.reconcile,
            clock=clock,
            workers=1,
            ready=self.caches.synced,
            active=active,
        )
        self.managed: dict[Key, ManagedIdentity] = {}
        #: When a workload last stopped running as each ServiceAccount.
        self.last_used: dict[Key, dt.datetime] = {}
        #: Each ServiceAccount's last request from the audit usage (nhi.handlers.usage sets
        #: it when the usage endpoint runs): a use the watches cannot see, kept across restarts.
        self.usage: Callable[[], Mapping[Key, dt.datetime]] | None = None
        self._by: dict[str, list[Informer]] = {}

    # ------------------------------------------------------------------ wiring

    def watch(self, operator_caches: WatchCaches) -> None:
        add = self.caches.add
        by = self._by
        by["sa"] = add("ServiceAccount", transform=service_account_from_body)
        by["token"] = add(
            "Secret", field_selector=f"type={TOKEN_TYPE}", transform=token_secret_from_body
        )
        by["tls"] = add("Secret", field_selector=f"type={TLS_TYPE}", transform=tls_record)
        # Opaque Secrets: metadata only, so no value ever reaches the operator.
        by["secret"] = add(
            "Secret",
            field_selector=f"type={OPAQUE_TYPE}",
            metadata_only=True,
            transform=opaque_secret_from_body,
        )
        by["role"] = add("Role", transform=_role("Role"))
        by["role"] += add("ClusterRole", namespaced=False, transform=_role("ClusterRole"))
        by["binding"] = add("RoleBinding", transform=_binding("RoleBinding"))
        by["binding"] += add(
            "ClusterRoleBinding", namespaced=False, transform=_binding("ClusterRoleBinding")
        )
        by["workload"] = []
        for kind in WORKLOAD_KINDS:
            by["workload"] += add(kind, transform=_workload(kind), on_change=self._workload)
        by["namespace"] = add(
            "Namespace", namespaced=False, metadata_only=True, transform=meta_from_body
        )
        self.controller.watch(self.caches.informers, self._the_inventory, delay=self.interval)
        identities = operator_caches.of("MachineIdentity")
        for informer in identities:
            informer.subscribe(self._identity)
        self.controller.watch(identities, self._the_inventory, delay=self.interval)

    def _the_inventory(self, key: Key, old: Any, new: Any) -> Iterable[Key]:
        return (KEY,)

    def _workload(self, key: Key, old: WorkloadInfo | None, new: WorkloadInfo | None) -> None:
        if old is not None and (new is None or new.service_account != old.service_account):
            self.last_used[(key[0], old.service_account)] = self.clock.now()

    def _identity(self, key: Key, old: Any, new: Any) -> None:
        if new is None:
            self.managed.pop(key, None)
            return
        try:
            self.managed[key] = managed_identity_from_body(unpack(new))
        except Exception:  # an entry no rule foresaw: never the watch's end
            self.managed.pop(key, None)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.caches.start()
        self.controller.start()
        self.controller.add(KEY)

    async def stop(self) -> None:
        await self.controller.stop()
        await self.caches.stop()
        for sink in self.sinks:
            await sink.caches.stop()

    # ------------------------------------------------------------------ the run

    def observed(self) -> Observed:
        by = self._by
        sas = {(r.meta.namespace, r.meta.name): r for r in _values(by["sa"])}
        roles = {r.ref: r for r in _values(by["role"])}
        namespaces = {m.name: m for m in _values(by["namespace"])}
        return Observed(
            service_accounts=sas,
            workloads=_values(by["workload"]),
            tokens=_values(by["token"]),
            tls=_values(by["tls"]),
            secrets=_values(by["secret"]),
            roles=roles,
            bindings=_values(by["binding"]),
            namespaces=namespaces,
            identities=list(self.managed.values()),
            last_used=self._last_used(),
            scope=self.namespaces,
        )

    def _last_used(self) -> dict[Key, dt.datetime]:
        out = dict(self.last_used)
        for key, at in (self.usage() if self.usage is not None else {}).items():
            out[key] = max(out.get(key, at), at)
        return out

    async def reconcile(self, key: Key) -> Result:
        await self.identities_ready.wait()
        await self._reports()
        outcome = await self.reconciler.run(self.observed())
        return Result(requeue_at=outcome.next_due)

    async def _reports(self) -> None:
        """Add the writer of each report format as soon as it can write."""
        writing = self.reconciler.reports
        for sink in self.sinks:
            if sink.writer not in writing and await sink.ready():
                writing.append(sink.writer)
