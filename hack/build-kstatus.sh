#!/usr/bin/env bash
# Builds (or reuses) the kstatus helper from hack/kstatus: a tiny program that prints, for each
# Kubernetes object it reads as JSON on stdin, the status sigs.k8s.io/cli-utils' kstatus computes
# (the library Flux and Helm 4 use to wait for resources). The binary goes into the control
# plane's cache directory, keyed by its own cli-utils version, so only a fresh machine pays the
# build (a few seconds once the module cache is warm).
#
# Prints the binary's path on its last line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "build-kstatus: $*" >&2; }

bin=$(bash "$here/build-controlplane.sh" | tail -n1)
version=$(awk '$1 == "sigs.k8s.io/cli-utils" { print $2; exit }' "$here/kstatus/go.mod")
[ -n "$version" ] || { log "no sigs.k8s.io/cli-utils requirement in hack/kstatus/go.mod"; exit 1; }
# The version alone would miss a local change to main.go or go.sum: add a short content hash.
sum=$(cat "$here/kstatus/go.mod" "$here/kstatus/go.sum" "$here/kstatus/main.go" | sha256sum | cut -c1-8)
out="$bin/kstatus-${version}-${sum}"

if [ ! -x "$out" ]; then
  command -v go >/dev/null || { log "go is required to build the kstatus helper"; exit 1; }
  log "go build nhi.dev/kstatus (sigs.k8s.io/cli-utils ${version})"
  tmp="$out.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  (cd "$here/kstatus" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -ldflags "-s -w" -o "$tmp" .)
  mv "$tmp" "$out"
fi

echo "$out"
