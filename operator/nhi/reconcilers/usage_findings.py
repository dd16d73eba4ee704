"""What the usage reveals, reported as Warning Events and metrics: new behaviour after the
learning window, tokens minted by a person and then used (lineage), and pod-bound tokens used
from an address that is not their pod's or bound to a pod outside the identity's workloads.
Run by :class:`~nhi.reconcilers.usage.UsageStore` once per pass; the verdicts are in
:mod:`nhi.policies.usage`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nhi import metrics_usage as metrics
from nhi.k8s.client import ApiError
from nhi.models.usage import Observation
from nhi.policies import usage as policy

if TYPE_CHECKING:
    from nhi.reconcilers.usage import UsageStore

log = logging.getLogger("nhi.usage")

BookKey = tuple[str, str]
#: Most pod-bound token uses remembered as checked (then forgotten all at once).
MAX_CHECKED = 50_000


def report(store: UsageStore, bodies: Iterable[Mapping[str, Any]]) -> int:
    """A Warning Event for each new behaviour: on the MachineIdentity that manages the
    ServiceAccount, else on the ServiceAccount. Returns how many were posted."""
    novelties, store.novelties = store.novelties, []
    human, store.human_uses = store.human_uses, []
    if store.events is None or not (novelties or human):
        return 0
    by_sa = managers_of(bodies)
    for obs, mint in human:
        subject = subject_of(by_sa, obs)
        message = policy.person_minted_message(obs, mint)
        store.events.post(subject, "Warning", policy.TOKEN_MINTED_BY_PERSON, message)
        log.warning(
            "a token minted by a person was used",
            extra={"serviceAccount": f"{obs.namespace}/{obs.service_account}",
                   "credential": obs.credential_id, "mintedBy": mint.minted_by},
        )  # fmt: skip
    for obs in novelties:
        subject = subject_of(by_sa, obs)
        message = policy.behaviour_message(obs, store.learning_window)
        store.events.post(subject, "Warning", policy.NEW_BEHAVIOUR, message)
        log.warning(
            "a ServiceAccount did something new",
            extra={"serviceAccount": f"{obs.namespace}/{obs.service_account}",
                   "verb": obs.access.verb, "resource": obs.access.rbac_resource,
                   "group": obs.access.api_group},
        )  # fmt: skip
    return len(novelties) + len(human)


async def check_pods(store: UsageStore, managers: Mapping[BookKey, Mapping[str, Any]]) -> int:
    """Compare the source address of pod-bound tokens with their pods' (one read of each
    pod); a token used from elsewhere is a TokenUsedOutsidePod Event, and a MachineIdentity's
    token bound to a pod that is not among its workloads a TokenOfForeignPod Event. Returns
    how many."""
    uses, store.pod_uses = store.pod_uses, {}
    found = 0
    for key, obs in uses.items():
        if key in store.pod_checked:
            continue  # used again while an earlier pass was reading its pod: reported once
        try:
            pod = await store.api.get("Pod", obs.namespace, obs.pod)
        except ApiError as err:
            log.debug("could not read a pod", extra={"error": str(err)})
            continue
        manager = managers.get((obs.namespace, obs.service_account))
        foreign = pod is not None and manager is not None and policy.foreign_pod(pod, manager)
        if pod is not None and not foreign and not policy.pod_addresses(pod):
            continue  # no address yet: looked at again on the next use
        store.pod_checked.add(key)
        if len(store.pod_checked) > MAX_CHECKED:
            store.pod_checked.clear()
        if foreign:
            assert pod is not None and manager is not None
            found += 1
            metrics.usage_tokens_foreign_pod.labels(obs.namespace).inc()
            _post(store, manager, policy.TOKEN_OF_FOREIGN_POD,
                  policy.foreign_pod_message(obs, manager))  # fmt: skip
        if policy.outside_pod(obs, pod):
            assert pod is not None
            found += 1
            metrics.usage_tokens_outside_pod.labels(obs.namespace).inc()
            _post(store, subject_of(managers, obs), policy.TOKEN_USED_OUTSIDE_POD,
                  policy.outside_pod_message(obs, pod))  # fmt: skip
    return found


def _post(store: UsageStore, subject: Mapping[str, Any], reason: str, message: str) -> None:
    if store.events is not None:
        store.events.post(subject, "Warning", reason, message)


def managers_of(bodies: Iterable[Mapping[str, Any]]) -> dict[BookKey, Mapping[str, Any]]:
    """The MachineIdentity managing each ServiceAccount."""
    out: dict[BookKey, Mapping[str, Any]] = {}
    for body in bodies:
        meta = body.get("metadata") or {}
        sa = ((body.get("spec") or {}).get("serviceAccount") or {}).get("name") or meta.get("name")
        out[(str(meta.get("namespace", "")), str(sa))] = body
    return out


def subject_of(
    managers: Mapping[BookKey, Mapping[str, Any]], obs: Observation
) -> Mapping[str, Any]:
    """What an Event about the ServiceAccount's use is posted on: its identity, or itself."""
    return managers.get((obs.namespace, obs.service_account)) or {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"namespace": obs.namespace, "name": obs.service_account},
    }
