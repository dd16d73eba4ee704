"""Label and annotation keys, reasons and other names shared by every layer."""

from __future__ import annotations

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "nhi-operator"
IDENTITY_LABEL = "nhi.dev/identity"
IDENTITY_NAMESPACE_LABEL = "nhi.dev/identity-namespace"
CREDENTIAL_LABEL = "nhi.dev/credential"
#: The owning identity's UID on cluster-scoped children, which cannot carry an ownerReference
#: to a namespaced MachineIdentity (see nhi.policies.ownership).
OWNER_UID_ANNOTATION = "nhi.dev/owner-uid"
#: On an adopted ServiceAccount: its labels, annotations and automount setting from before
#: the adoption (JSON), restored when the identity lets it go.
ADOPTED_FROM_ANNOTATION = "nhi.dev/adopted-from"

ADOPT_ANNOTATION = "nhi.dev/adopt"
RENEW_ANNOTATION = "nhi.dev/renew-requested-at"
REVOKE_ANNOTATION = "nhi.dev/revoke"
NOT_AFTER_ANNOTATION = "nhi.dev/not-after"
RESTARTED_AT_ANNOTATION = "nhi.dev/restartedAt"

MANAGED_SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY}"


class Phase:
    """A MachineIdentity's ``status.phase``."""

    PENDING = "Pending"
    ACTIVE = "Active"
    REVOKED = "Revoked"
    EXPIRED = "Expired"
    #: Not ready on purpose: revoked, or its lifetime.validFor window ended.
    SETTLED = (REVOKED, EXPIRED)


class Reason:
    """Condition and Event reasons (CamelCase constants, stable for alerting)."""

    # Ready
    READY = "Ready"
    CREDENTIALS_ISSUED = "CredentialsIssued"
    PROVISIONED = "Provisioned"
    # Reconciling
    PROVISIONING = "Provisioning"
    # Stalled / not ready
    INVALID_SPEC = "InvalidSpec"
    SERVICE_ACCOUNT_CONFLICT = "ServiceAccountConflict"
    CLUSTER_PERMISSIONS_NOT_ALLOWED = "ClusterPermissionsNotAllowed"
    POLICY_VIOLATION = "PolicyViolation"
    OWNERSHIP_CONFLICT = "OwnershipConflict"
    ADOPTION_NOT_ALLOWED = "AdoptionNotAllowed"
    API_ERROR = "ApiError"
    # Events
    CREATED = "Created"
    UPDATED = "Updated"
    RESTORED = "Restored"
    DELETED = "Deleted"
    RELEASED = "Released"
