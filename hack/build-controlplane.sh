#!/usr/bin/env bash
# Builds (or reuses) the local control plane binaries: etcd, kube-apiserver,
# kube-controller-manager and kubectl, from the pinned wrapper module in
# hack/controlplane, and helm with `go install`. Binaries are cached outside
# the repository, keyed by version, so only a fresh machine pays the build.
#
# Prints the directory holding the binaries on its last line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache=${NHI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nhi-operator}
bin="$cache/k8s-v${KUBERNETES_VERSION}-etcd-v${ETCD_VERSION}-helm-v${HELM_VERSION}/bin"
mkdir -p "$bin"
# One build at a time: a second caller waits for the first and then reuses its binaries.
if command -v flock >/dev/null; then
  exec 9>"$cache/.build.lock"
  flock 9
fi

log() { echo "build-controlplane: $*" >&2; }

need=()
for b in etcd kube-apiserver kube-controller-manager kubectl; do
  [ -x "$bin/$b" ] || need+=("$b")
done

if [ ${#need[@]} -gt 0 ]; then
  command -v go >/dev/null || { log "go is required to build the control plane"; exit 1; }
  start=$(date +%s)
  log "building ${need[*]} (Kubernetes v${KUBERNETES_VERSION}, etcd v${ETCD_VERSION}); a cold build takes several minutes"
  major=${KUBERNETES_VERSION%%.*}
  minor=${KUBERNETES_VERSION#*.}; minor=${minor%%.*}
  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ldk=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldk+=" -X $pkg.gitVersion=v${KUBERNETES_VERSION}"
    ldk+=" -X $pkg.gitMajor=${major} -X $pkg.gitMinor=${minor}"
    ldk+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date}"
  done
  tmp="$bin/.tmp.$$"
  mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  for b in "${need[@]}"; do
    case $b in
      etcd) pkg=go.etcd.io/etcd/server/v3; ld="-s -w" ;;
      *) pkg=k8s.io/kubernetes/cmd/$b; ld="-s -w $ldk" ;;
    esac
    log "go build $pkg"
    (cd "$here/controlplane" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ld" -o "$tmp/$b" "$pkg")
    mv "$tmp/$b" "$bin/$b"
  done
  log "built in $(( $(date +%s) - start ))s"
fi

if [ ! -x "$bin/helm" ]; then
  log "go install helm.sh/helm/v${HELM_VERSION%%.*}/cmd/helm@v${HELM_VERSION}"
  CGO_ENABLED=0 GOBIN="$bin" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v${HELM_VERSION%%.*}/cmd/helm@v${HELM_VERSION}"
fi

echo "$bin"
