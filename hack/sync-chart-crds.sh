#!/usr/bin/env bash
# Copies the canonical CRDs (crds/nhi.dev_*.yaml) and the Prometheus rule file
# (manifests/prometheus/nhi-operator.rules.yaml) into the Helm chart, and the CRDs into the
# kustomize base (manifests/base/crds/), byte for byte.
# tests/unit/test_chart_static.py fails when the copies drift; run this after editing either.
#
# The chart's crds/ also holds kopf's peering CRDs (kopf.dev_*.yaml). They belong to the
# chart only (the operator's peering needs them when it runs with --peering), so this script
# leaves them alone and removes no other file.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart="$root/charts/nhi-operator"

mkdir -p "$chart/crds" "$chart/files"
for f in "$root"/crds/nhi.dev_*.yaml; do
  cp "$f" "$chart/crds/$(basename "$f")"
done
# A CRD removed from crds/ must go from the chart too.
for f in "$chart"/crds/nhi.dev_*.yaml; do
  [ -e "$root/crds/$(basename "$f")" ] || rm -f "$f"
done
cp "$root/manifests/prometheus/nhi-operator.rules.yaml" "$chart/files/nhi-operator.rules.yaml"
# The AccessGrant admission policies: the chart renders its copy under the release's name.
cp "$root/manifests/base/accessgrantpolicy.yaml" "$chart/files/accessgrantpolicy.yaml"

# The kustomize base cannot load files from outside its directory, so it holds copies too:
# the nhi.dev CRDs and kopf's ClusterKopfPeering CRD (from the chart).
base="$root/manifests/base/crds"
mkdir -p "$base"
for f in "$root"/crds/nhi.dev_*.yaml; do
  cp "$f" "$base/$(basename "$f")"
done
for f in "$base"/nhi.dev_*.yaml; do
  [ -e "$root/crds/$(basename "$f")" ] || rm -f "$f"
done
cp "$chart/crds/kopf.dev_clusterkopfpeerings.yaml" "$base/kopf.dev_clusterkopfpeerings.yaml"
echo "sync-chart-crds: the chart and manifests/base are in sync with crds/ and manifests/prometheus/" >&2
