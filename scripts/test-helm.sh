#!/usr/bin/env bash
# The Helm chart's tests on their own: install helm + kubernetes-validate (cached in
# ${VAKT_TOOLS:-$HOME/.cache/vakt-tools}; a second run takes a second), then run the chart tests
# (module helm of tests/e2e) with the tools required, so that nothing is skipped.
#   bash scripts/test-helm.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${VAKT_TOOLS:-$HOME/.cache/vakt-tools}
bash scripts/install-k8s-tools.sh "$TOOLS"
export PATH="$TOOLS/bin:$PATH" VAKT_TOOLS="$TOOLS" VAKT_REQUIRE_K8S_TOOLS=1
exec cargo test --locked --test e2e helm:: "$@"
