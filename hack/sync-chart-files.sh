#!/usr/bin/env bash
# Copies the generated and shared manifests the Helm chart renders from into
# charts/herald/files, byte for byte, so that the chart and config/ cannot
# drift: CRDs, the manager's and the dispatcher's generated RBAC, the
# admission policy and the monitoring kit. `make manifests` runs it;
# verify-generated fails when a copy is stale.
set -euo pipefail
cd "$(dirname "$0")/.."

files=charts/herald/files
rm -rf "$files/crds" "$files/rbac" "$files/admission" "$files/monitoring"
mkdir -p "$files/crds" "$files/rbac/dispatcher" "$files/admission" "$files/monitoring"
cp config/crd/bases/*.yaml "$files/crds/"
cp config/rbac/role.yaml "$files/rbac/"
cp config/rbac/dispatcher/role.yaml "$files/rbac/dispatcher/"
cp config/admission/secret_reference_policy.yaml "$files/admission/"
if [[ -d config/monitoring ]]; then
  cp config/monitoring/prometheus_rule.yaml config/monitoring/grafana_dashboard.json "$files/monitoring/"
fi
