"""The inventory's findings, pure: (inventory, settings, now) -> findings.

Each rule is a function yielding :class:`Finding`; each finding names its rule, the OWASP
NHI Top 10 (2025) risk, a severity, the objects concerned (the first is the subject, which
exemptions are matched against) and how to fix it. :func:`evaluate` runs the enabled rules
and drops exempted findings and, unless asked, those on system identities. The rules on
permissions (NHI5) are in :mod:`nhi.policies.findings_permissions`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from nhi.models.discovered import Identity
from nhi.models.inventory import Finding, ObjectRef
from nhi.models.inventory_config import InventoryConfig
from nhi.policies.findings_permissions import ADMIN_ROLES, overprivileged, unused_permissions
from nhi.policies.inventory import Inventory, missing_subjects

# ---------------------------------------------------------------------------------- NHI1


def unused_service_accounts(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    for ident in inv.identities:
        if ident.workloads or ident.name == "default" or ident.created is None:
            continue
        since = max(ident.created, inv.observed.last_used.get(ident.key, ident.created))
        if now - since < config.unused_after:
            continue
        yield Finding(
            "unused-service-account",
            "NHI1",
            "medium" if ident.direct_grants or ident.tokens else "low",
            ident.namespace,
            (ident.ref, *(g.binding for g in ident.direct_grants)),
            f"no workload has run as {ident.ref}, nor made a request seen as it, since "
            f"{since:%Y-%m-%d}",
            "delete the ServiceAccount and its bindings if it is no longer needed, or declare "
            "it with a MachineIdentity (nhi adopt)",
            ident.labels,
        )


def bindings_to_missing_service_accounts(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    for binding, subject in missing_subjects(inv.observed):
        default = "high" if binding.kind == "ClusterRoleBinding" else "medium"
        severity = (
            ADMIN_ROLES.get(binding.role_name, default)
            if binding.role_kind == "ClusterRole"
            else default
        )
        sa = ObjectRef("ServiceAccount", subject.namespace, subject.name)
        yield Finding(
            "binding-to-missing-service-account",
            "NHI1",
            severity,
            binding.meta.namespace,
            (binding.ref, sa, binding.role_ref),
            f"{binding.ref} binds {binding.role_ref} to {sa}, which does not exist: whoever "
            "creates that name inherits the permissions",
            f"remove {sa} from the subjects of {binding.ref} (or delete the binding)",
            binding.meta.labels,
        )


def orphaned_token_secrets(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    sas = inv.observed.service_accounts
    for t in inv.observed.tokens:
        sa = sas.get((t.meta.namespace, t.service_account))
        if sa is not None and (not t.service_account_uid or t.service_account_uid == sa.meta.uid):
            continue
        ref = ObjectRef("ServiceAccount", t.meta.namespace, t.service_account)
        yield Finding(
            "orphaned-token-secret",
            "NHI1",
            "medium",
            t.meta.namespace,
            (t.ref, ref),
            f"the token Secret {t.ref} belongs to {ref}, which "
            + ("does not exist" if sa is None else "was deleted and created again"),
            f"delete the Secret {t.ref}",
            t.meta.labels,
        )


def bindings_to_missing_roles(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    for b in inv.observed.bindings:
        if b.role_ref in inv.observed.roles:
            continue
        if b.role_kind == "Role" and not inv.observed.in_scope(b.meta.namespace):
            continue
        yield Finding(
            "binding-to-missing-role",
            "NHI1",
            "low",
            b.meta.namespace,
            (
                b.ref,
                b.role_ref,
                *(
                    ObjectRef("ServiceAccount", s.namespace, s.name)
                    for s in b.subjects
                    if s.kind == "ServiceAccount"
                ),
            ),
            f"{b.ref} refers to {b.role_ref}, which does not exist: whoever creates it grants "
            "its permissions to the binding's ServiceAccounts",
            f"delete {b.ref} if it is left over, or create the role it needs",
            b.meta.labels,
        )


# ---------------------------------------------------------------------------------- NHI4


def legacy_token_secrets(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    for t in inv.observed.tokens:
        if t.invalid_since is not None:
            severity, use = "low", f"invalidated since {t.invalid_since}"
        elif t.last_used is not None and now.date() - t.last_used <= config.recent_use:
            severity, use = "high", f"last used {t.last_used}"
        else:
            severity = "medium"
            use = f"last used {t.last_used}" if t.last_used else "no recorded use"
        yield Finding(
            "legacy-token-secret",
            "NHI4",
            severity,
            t.meta.namespace,
            (t.ref, ObjectRef("ServiceAccount", t.meta.namespace, t.service_account)),
            f"{t.ref} holds a non-expiring legacy ServiceAccount token ({use})",
            "move its users to bound tokens (TokenRequest, projected volumes or a "
            "MachineIdentity credential), then delete the Secret",
            t.meta.labels,
        )


def _automounts(ident: Identity) -> list[ObjectRef]:
    default = ident.automount is not False
    return [w.ref for w in ident.workloads if (w.automount if w.automount is not None else default)]


def automount_without_permissions(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    for ident in inv.identities:
        # A group binding to every ServiceAccount (system:service-account-issuer-discovery)
        # is no sign that this one needs the API.
        if ident.direct_grants or not ident.workloads:
            continue
        mounted = _automounts(ident)
        if mounted:
            yield Finding(
                "automounted-token-without-permissions",
                "NHI4",
                "low",
                ident.namespace,
                (ident.ref, *mounted),
                f"{len(mounted)} workload(s) mount a token of {ident.ref}, which has no "
                "permission of its own: the token is only an attack surface",
                "set automountServiceAccountToken: false on the ServiceAccount or the pod template",
                ident.labels,
            )


# ---------------------------------------------------------------------------------- NHI7


def long_lived_credentials(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    for s in inv.observed.tls:
        cert = s.certificate
        if cert is None:
            yield Finding(
                "malformed-tls-secret",
                "NHI7",
                "low",
                s.meta.namespace,
                (s.ref,),
                f"{s.ref} is a TLS Secret but {s.problem}",
                "put a PEM certificate in tls.crt, or delete the Secret",
                s.meta.labels,
            )
        elif cert.validity > config.max_certificate_validity:
            yield Finding(
                "long-lived-certificate",
                "NHI7",
                "medium",
                s.meta.namespace,
                (s.ref,),
                f"the certificate in {s.ref} ({cert.subject}) is valid for "
                f"{cert.validity.days} days, more than {config.max_certificate_validity.days}",
                "issue it with a shorter lifetime and rotate it automatically (a "
                "MachineIdentity X509 credential)",
                s.meta.labels,
            )
    for t in inv.observed.tokens:
        created = t.meta.created
        if created is not None and now - created > config.max_secret_age:
            yield Finding(
                "old-token-secret",
                "NHI7",
                "medium",
                t.meta.namespace,
                (t.ref,),
                f"{t.ref} holds a token created {created:%Y-%m-%d}, more than "
                f"{config.max_secret_age.days} days ago, that never expires",
                "delete the Secret; give its users bound tokens that expire",
                t.meta.labels,
            )


def old_secrets(inv: Inventory, config: InventoryConfig, now: dt.datetime) -> Iterator[Finding]:
    """Opaque Secrets nothing controls (no operator rotates them), unchanged for longer than
    ``maxSecretAge``; and StaticSecret credentials of MachineIdentities not rotated for as
    long (a long ttl)."""
    bound = config.max_secret_age
    for s in inv.observed.secrets:
        if s.controller or s.changed is None or now - s.changed <= bound:
            continue
        yield Finding(
            "old-secret",
            "NHI7",
            "low",
            s.namespace,
            (s.ref,),
            f"{s.ref} has not changed since {s.changed:%Y-%m-%d}, more than {bound.days} days, "
            "and nothing rotates it",
            "rotate it, or let a MachineIdentity StaticSecret credential generate and rotate it",
            s.labels,
        )
    for mi in inv.observed.identities:
        for name, secret, rotated in mi.static:
            if now - rotated <= bound:
                continue
            yield Finding(
                "stale-static-secret",
                "NHI7",
                "medium",
                mi.namespace,
                (mi.ref, ObjectRef("Secret", mi.namespace, secret)),
                f"the StaticSecret credential {name} of {mi.ref} was last rotated on "
                f"{rotated:%Y-%m-%d}, more than {bound.days} days ago",
                f"a shorter ttl for {name} (it is rotated before it expires), or "
                f"`nhi renew {mi.name} -n {mi.namespace}` now",
                {},
            )


# ---------------------------------------------------------------------------------- NHI8


def environment_isolation(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    namespaces = inv.observed.namespaces
    for b in inv.observed.bindings:
        if b.kind != "RoleBinding":
            continue
        for s in sorted(set(b.subjects)):
            if s.kind != "ServiceAccount" or s.namespace == b.meta.namespace:
                continue
            sa = ObjectRef("ServiceAccount", s.namespace, s.name)
            here = namespaces.get(b.meta.namespace)
            there = namespaces.get(s.namespace)
            env_here = here.labels.get(config.environment_label) if here else None
            env_there = there.labels.get(config.environment_label) if there else None
            crossed = env_here is not None and env_there is not None and env_here != env_there
            yield Finding(
                "cross-environment-binding" if crossed else "cross-namespace-binding",
                "NHI8",
                "high" if crossed else "medium",
                b.meta.namespace,
                (b.ref, sa, b.role_ref),
                f"{b.ref} gives {sa} of another namespace {b.role_ref}"
                + (f" across environments ({env_there} -> {env_here})" if crossed else ""),
                "give the workload an identity of its own in the namespace it acts on, or "
                "move it there",
                b.meta.labels,
            )


# ---------------------------------------------------------------------------------- NHI9


def reuse(inv: Inventory, config: InventoryConfig, now: dt.datetime) -> Iterator[Finding]:
    defaults: dict[str, list[ObjectRef]] = defaultdict(list)
    for ident in inv.identities:
        refs = [w.ref for w in ident.workloads]
        if ident.name == "default":
            defaults[ident.namespace] += refs
        elif len(refs) > 1:
            yield Finding(
                "shared-service-account",
                "NHI9",
                "medium",
                ident.namespace,
                (ident.ref, *refs),
                f"{ident.ref} is used by {len(refs)} workloads: " + ", ".join(str(r) for r in refs),
                "give each workload its own ServiceAccount with only what it needs",
                ident.labels,
            )
    for namespace, refs in sorted(defaults.items()):
        if refs:
            default = ObjectRef("ServiceAccount", namespace, "default")
            yield Finding(
                "default-service-account-used",
                "NHI9",
                "medium" if len(refs) > 1 else "low",
                namespace,
                (default, *refs),
                f"{len(refs)} workload(s) run as {default}: " + ", ".join(str(r) for r in refs),
                "set serviceAccountName to a ServiceAccount of the workload's own",
                {},
            )


def unknown_owners(inv: Inventory, config: InventoryConfig, now: dt.datetime) -> Iterator[Finding]:
    for ident in inv.identities:
        if ident.owner == "unknown" and (ident.workloads or ident.direct_grants):
            yield Finding(
                "unknown-owner",
                "NHI1",
                "low",
                ident.namespace,
                (ident.ref,),
                f"nobody is named as the owner of {ident.ref}",
                f"label it with one of {', '.join(config.owner_keys)}, or declare it with a "
                "MachineIdentity",
                ident.labels,
            )


RuleFunction = Callable[[Inventory, InventoryConfig, dt.datetime], Iterable[Finding]]
RULE_FUNCTIONS: tuple[RuleFunction, ...] = (
    unused_service_accounts,
    bindings_to_missing_service_accounts,
    orphaned_token_secrets,
    bindings_to_missing_roles,
    legacy_token_secrets,
    automount_without_permissions,
    overprivileged,
    unused_permissions,
    long_lived_credentials,
    old_secrets,
    environment_isolation,
    reuse,
    unknown_owners,
)


def sort_key(f: Finding) -> tuple[str, str, str, str, tuple[str, ...]]:
    """Findings in a stable order (cheaper than comparing the dataclasses field by field)."""
    return (f.namespace, f.rule, f.message, f.severity, tuple(str(o) for o in f.objects))


def evaluate(inv: Inventory, config: InventoryConfig, now: dt.datetime) -> tuple[Finding, ...]:
    """Every finding of the enabled rules, sorted, without exempted ones and (unless
    ``include_system``) without those whose subject is a system identity."""
    out = set()
    system: dict[tuple[str, str], bool] = {}

    def is_system(namespace: str, name: str) -> bool:
        key = (namespace, name)
        if key not in system:
            system[key] = config.is_system(namespace, name)
        return system[key]

    for rule in RULE_FUNCTIONS:
        for f in rule(inv, config, now):
            if not config.enabled(f.rule):
                continue
            subject = f.subject
            if config.exemptions and config.exempt(
                f.rule, subject.namespace or f.namespace, subject.name, f.labels
            ):
                continue
            if not config.include_system and _system(f, is_system):
                continue
            out.add(f)
    return tuple(sorted(out, key=sort_key))


def _system(f: Finding, is_system: Callable[[str, str], bool]) -> bool:
    """A finding about the platform's own: every ServiceAccount it names is a system one
    (or, without one, its namespace is a system namespace)."""
    sas = [o for o in f.objects if o.kind == "ServiceAccount"]
    if sas:
        return all(is_system(o.namespace, o.name) for o in sas)
    if f.subject.kind == "Group":
        return False
    return bool(f.namespace) and is_system(f.namespace, "")
