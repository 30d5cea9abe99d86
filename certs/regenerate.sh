#!/usr/bin/env bash
# Regenerate the development PKI under certs/dev/ (git-ignored). Development only.
set -euo pipefail
cd "$(dirname "$0")/.."
TD=${TRUST_DOMAIN:-dev.vakt.local}
rm -rf certs/dev
cargo run --quiet -- certs init --dir certs/dev/ca --trust-domain "$TD"
for sa in orders web; do
  cargo run --quiet -- certs issue --ca certs/dev/ca --spiffe-id "spiffe://$TD/ns/shop/sa/$sa" --out "certs/dev/$sa"
done
