#!/usr/bin/env bash
# Regenerates CRDs, RBAC and deepcopy and fails when that changed anything,
# so stale generated files never pass the tests. Works on a dirty tree too:
# it compares before/after, not against git.
set -euo pipefail
cd "$(dirname "$0")/.."

generated=(config/crd/bases config/rbac/role.yaml config/rbac/dispatcher/role.yaml api/v1alpha1/zz_generated.deepcopy.go
  api/delivery/v1alpha1/zz_generated.deepcopy.go dispatcher/deliveryapi/openapi/zz_generated.openapi.go
  charts/herald/files)
before=$(mktemp -d)
trap 'rm -rf "$before"' EXIT
for p in "${generated[@]}"; do
  [[ -e $p ]] && mkdir -p "$before/$(dirname "$p")" && cp -r "$p" "$before/$p"
done

make --no-print-directory -s manifests generate >/dev/null

stale=0
for p in "${generated[@]}"; do
  if ! diff -r -q "$before/$p" "$p" >/dev/null 2>&1; then
    echo "stale generated file: $p (now regenerated; review and commit it)" >&2
    stale=1
  fi
done
exit $stale
