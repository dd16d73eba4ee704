{{/* Names and labels. */}}

{{- define "nhi-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nhi-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nhi-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nhi-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nhi-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nhi-operator.labels" -}}
helm.sh/chart: {{ include "nhi-operator.chart" . }}
{{ include "nhi-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: nhi-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "nhi-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nhi-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nhi-operator.peeringName" -}}
{{- default (include "nhi-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "nhi-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's permissions, in three parts. They are derived from the code: every verb is one
the operator (or kopf, for it) sends, or one a planned feature needs; docs/security.md explains
each. No wildcard anywhere. manifests/base/rbac.yaml holds the same rules (a test compares them).

namespacedRules: objects inside the namespaces the operator serves. Cluster-wide install: part
  of the ClusterRole. watchNamespaces: a Role in each listed namespace instead.
clusterRules: cluster-scoped objects and review APIs. Always a ClusterRole.
*/}}

{{- define "nhi-operator.namespacedRules" -}}
# MachineIdentities: watched; patched for kopf's finalizer and progress annotations.
- apiGroups: ["nhi.dev"]
  resources: ["machineidentities"]
  verbs: ["list", "watch", "patch"]
# MachineIdentity status (merge patch of the status subresource).
- apiGroups: ["nhi.dev"]
  resources: ["machineidentities/status"]
  verbs: ["patch"]
# AccessGrants: watched; patched for the finalizer; deleted when their record's retention
# ends; their status is written. Their Roles and RoleBindings are the roles/rolebindings
# rules below.
- apiGroups: ["nhi.dev"]
  resources: ["accessgrants"]
  verbs: ["list", "watch", "patch", "delete"]
- apiGroups: ["nhi.dev"]
  resources: ["accessgrants/status"]
  verbs: ["patch"]
# Namespaced issuers: watched; patched for kopf's finalizer and progress annotations, and
# their status.
- apiGroups: ["nhi.dev"]
  resources: ["identityissuers"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["nhi.dev"]
  resources: ["identityissuers/status"]
  verbs: ["patch"]
# The identities' ServiceAccounts: watched (drift), read (a namesake is never taken over),
# created and updated with server-side apply, deleted on revocation.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Bound tokens for ServiceAccountToken credentials (TokenRequest API).
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
# Credential Secrets (tokens, certificates and keys, static secrets) and CA Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Trust bundles and CRLs.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The audit trail users read with kubectl describe / get events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# Workloads that use an identity (spec.workloads.selector): counted, and restarted after a
# rotation (a patch of the pod template annotation).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["get", "list", "watch"]
# The identities' Roles and RoleBindings: watched, created, applied, deleted; get: whose is
# a namesake the operator found in the way (it is never written).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Writing a Role with rules the operator does not hold itself (escalate), and binding a Role
# it does not hold (bind). IdentityPolicy decides what may be granted: docs/security.md.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles"]
  verbs: ["escalate", "bind"]
{{- end }}

{{- define "nhi-operator.clusterRules" -}}
# IdentityPolicies: watched, read live by the admission webhook; their status is written.
- apiGroups: ["nhi.dev"]
  resources: ["identitypolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["nhi.dev"]
  resources: ["identitypolicies/status"]
  verbs: ["patch"]
# Cluster-wide issuers: watched; patched for kopf's finalizer (their CA Secret and CRL are
# removed on deletion) and progress annotations, and their status.
- apiGroups: ["nhi.dev"]
  resources: ["clusteridentityissuers"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["nhi.dev"]
  resources: ["clusteridentityissuers/status"]
  verbs: ["patch"]
# Namespace labels, for the namespaceSelector of IdentityPolicies.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
# The identities' ClusterRoles and ClusterRoleBindings: watched (drift); get: whose is a
# namesake in the way.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles", "clusterrolebindings"]
  verbs: ["get", "list", "watch"]
# bind: a RoleBinding to a ClusterRole the operator does not hold itself
# (spec.permissions.roleRefs such as view; allowedClusterRoles of IdentityPolicy gates it).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles"]
  verbs: ["bind"]
# Verifying issued tokens (TokenReview) and, at admission, that whoever writes an identity
# holds the permissions it grants (SubjectAccessReview).
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
# The IdentityPolicy admission webhook's configuration, written by the operator with its
# CA bundle (server-side apply creates it the first time).
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations"]
  verbs: ["get", "list", "watch", "create", "patch"]
# kopf discovers and follows the CRDs of the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
clusterGrantRules: cluster-wide grants for spec.permissions.clusterRules (policy-gated), left
out with rbac.clusterScopedGrants=false.
*/}}
{{- define "nhi-operator.clusterGrantRules" -}}
# ClusterRoles and ClusterRoleBindings for spec.permissions.clusterRules: applied, deleted.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles", "clusterrolebindings"]
  verbs: ["create", "patch", "delete"]
# escalate: writing a ClusterRole with rules the operator does not hold itself.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles"]
  verbs: ["escalate"]
{{- end }}

{{- define "nhi-operator.homeRules" -}}
# Namespace-scoped install, in the operator's own namespace when it is not watched: the CA
# Secrets and CRL ConfigMaps of ClusterIdentityIssuers live here (NHI_NAMESPACE).
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "nhi-operator.clusterPeeringRules" -}}
# kopf peering (--peering): the replicas' heartbeats in the ClusterKopfPeering object.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{- define "nhi-operator.namespacedPeeringRules" -}}
# kopf peering (--peering) in namespace-scoped mode: the KopfPeering object of this namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/* Fail early on settings that cannot work together. */}}
{{- define "nhi-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: without kopf peering every replica would reconcile the same objects at once" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.operator.healthPort) }}
{{- fail "metrics.port and operator.healthPort must differ" }}
{{- end }}
{{- end }}

{{/*
Discovery (discovery.enabled): read-only access to what the inventory lists, in the namespaces
discovered (discoveryNamespacedRules) and cluster-wide (discoveryClusterRules), and the
operator's own reports. manifests/components/discovery holds the same rules (a test compares
them).
*/}}
{{- define "nhi-operator.discoveryNamespacedRules" -}}
# Every ServiceAccount, and the legacy token, TLS and Opaque Secrets (listed by type; kept
# as metadata, a certificate's subject, issuer and validity; Opaque ones read as metadata
# only: never a value).
- apiGroups: [""]
  resources: ["serviceaccounts", "secrets", "pods"]
  verbs: ["list", "watch"]
# The workloads that run as each ServiceAccount.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["list", "watch"]
# Roles and RoleBindings: each identity's effective permissions.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["list", "watch"]
# The namespace's PolicyReport (and OpenReports' Report where installed): only the one the
# operator created (provenance tag) is ever patched or deleted.
- apiGroups: ["wgpolicyk8s.io"]
  resources: ["policyreports"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["openreports.io"]
  resources: ["reports"]
  verbs: ["list", "watch", "create", "patch", "delete"]
{{- end }}

{{- define "nhi-operator.discoveryClusterRules" -}}
# Namespace labels (owner keys, environments), ClusterRoles and ClusterRoleBindings.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles", "clusterrolebindings"]
  verbs: ["list", "watch"]
# The cluster's reports: only the ones the operator created are ever patched or deleted.
- apiGroups: ["wgpolicyk8s.io"]
  resources: ["clusterpolicyreports"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["openreports.io"]
  resources: ["clusterreports"]
  verbs: ["list", "watch", "create", "patch", "delete"]
{{- end }}
