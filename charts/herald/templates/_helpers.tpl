{{/*
Names. With the release named "herald" (as in the README) every object has
the name config/default gives it: herald-manager, herald-editor, ...
*/}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* herald.prefixed renames a name from config/ ("herald-…") for this release. */}}
{{- define "herald.prefixed" -}}
{{- printf "%s-%s" (include "herald.fullname" .root) (trimPrefix "herald-" .name) }}
{{- end }}

{{- define "herald.managerName" -}}
{{- include "herald.fullname" . }}-manager
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "herald.managerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end }}

{{- define "herald.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "herald.dispatcherNamespace" -}}
{{- default .Release.Namespace .Values.dispatcher.namespace }}
{{- end }}

{{/*
The dispatcher's ServiceAccount. The manager creates it in the dispatcher's
namespace under this fixed name (heraldv1alpha1.DispatcherName), whatever
the release is called; the chart binds the dispatcher's roles to it.
*/}}
{{- define "herald.dispatcherServiceAccount" -}}herald-dispatcher{{- end }}

{{/*
herald.generatedRBAC renders a copy of a role.yaml that controller-gen
generates from kubebuilder markers (files/rbac, kept in step by make
manifests) for this release: each ClusterRole with a ClusterRoleBinding,
each Role, placed in the dispatcher's namespace (the generated file says
herald-system), with a RoleBinding, all bound to one ServiceAccount.
Parameters: root (the chart's context), file, serviceAccount and
serviceAccountNamespace.
*/}}
{{- define "herald.generatedRBAC" -}}
{{- $root := .root }}
{{- $serviceAccount := .serviceAccount }}
{{- $serviceAccountNamespace := .serviceAccountNamespace }}
{{- range $doc := $root.Files.Get .file | splitList "\n---" }}
{{- $role := fromYaml $doc }}
{{- if and $role $role.kind }}
{{- $name := include "herald.prefixed" (dict "root" $root "name" $role.metadata.name) }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $role.kind }}
metadata:
  name: {{ $name }}
  {{- if eq $role.kind "Role" }}
  namespace: {{ include "herald.dispatcherNamespace" $root }}
  {{- end }}
  labels:
    {{- include "herald.labels" $root | nindent 4 }}
rules:
  {{- toYaml $role.rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $role.kind }}Binding
metadata:
  name: {{ $name }}
  {{- if eq $role.kind "Role" }}
  namespace: {{ include "herald.dispatcherNamespace" $root }}
  {{- end }}
  labels:
    {{- include "herald.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ $role.kind }}
  name: {{ $name }}
subjects:
- kind: ServiceAccount
  name: {{ $serviceAccount }}
  namespace: {{ $serviceAccountNamespace }}
{{- end }}
{{- end }}
{{- end }}

{{/*
herald.managerFlags maps every manager flag to its value, as JSON. To add a
manager flag: one value in values.yaml (and values.schema.json) and one line
here. Empty strings are left out (the flag keeps its default); lists are
joined with commas; maps and objects are passed as JSON. The chart tests
check that every flag of the manager binary appears here and that the
defaults match config/default.
*/}}
{{- define "herald.managerFlags" -}}
{{- $m := .Values.manager -}}
{{- $d := .Values.dispatcher -}}
{{- $f := dict -}}
{{- $_ := set $f "leader-elect" $m.leaderElect -}}
{{- $_ := set $f "health-probe-bind-address" (printf ":%v" $m.healthProbePort) -}}
{{- $_ := set $f "metrics-bind-address" (ternary "0" (printf ":%v" $m.metrics.port) (eq (int $m.metrics.port) 0)) -}}
{{- $_ := set $f "metrics-secure" $m.metrics.secure -}}
{{- $_ := set $f "enable-http2" $m.enableHTTP2 -}}
{{- $_ := set $f "manage-dispatcher" $m.manageDispatcher -}}
{{- $_ := set $f "zap-log-level" $m.log.level -}}
{{- $_ := set $f "zap-encoder" $m.log.encoder -}}
{{- $_ := set $f "zap-stacktrace-level" $m.log.stacktraceLevel -}}
{{- $_ := set $f "zap-time-encoding" $m.log.timeEncoding -}}
{{- $_ := set $f "zap-devel" $m.log.development -}}
{{- $_ := set $f "dispatcher-namespace" (include "herald.dispatcherNamespace" .) -}}
{{- $_ := set $f "dispatcher-image" (default (include "herald.image" .) $d.image) -}}
{{- $_ := set $f "dispatcher-replicas" $d.replicas -}}
{{- $_ := set $f "dispatcher-nats-url" $d.nats.url -}}
{{- $_ := set $f "dispatcher-nats-credentials-secret" $d.nats.credentialsSecret -}}
{{- $_ := set $f "dispatcher-nats-nkey-secret" $d.nats.nkeySecret -}}
{{- $_ := set $f "dispatcher-nats-tls-secret" $d.nats.tlsSecret -}}
{{- $_ := set $f "dispatcher-storage-size" $d.storage.size -}}
{{- $_ := set $f "dispatcher-storage-class" $d.storage.className -}}
{{- $_ := set $f "dispatcher-store-path" $d.storePath -}}
{{- $_ := set $f "dispatcher-allowed-cidrs" (join "," $d.allowedCIDRs) -}}
{{- $_ := set $f "dispatcher-cluster-cidrs" (join "," $d.clusterCIDRs) -}}
{{- $_ := set $f "dispatcher-network-policy" $d.networkPolicy.enabled -}}
{{- $_ := set $f "dispatcher-network-policy-cidrs" (join "," $d.networkPolicy.cidrs) -}}
{{- $_ := set $f "dispatcher-ingest-namespace-rate" $d.ingest.namespaceRate -}}
{{- $_ := set $f "dispatcher-ingest-namespace-burst" $d.ingest.namespaceBurst -}}
{{- $_ := set $f "dispatcher-ingest-namespace-max-in-flight" $d.ingest.namespaceMaxInFlight -}}
{{- $_ := set $f "dispatcher-ingest-max-connections" $d.ingest.maxConnections -}}
{{- $_ := set $f "dispatcher-token-review-rate" $d.ingest.tokenReviewRate -}}
{{- $_ := set $f "dispatcher-ingest-insecure-http" $d.ingest.insecureHTTP -}}
{{- $_ := set $f "dispatcher-tls-issuer" (ternary "external" $d.tls.issuer $d.tls.certManager.enabled) -}}
{{- $_ := set $f "dispatcher-tls-extra-hosts" (join "," $d.tls.extraHosts) -}}
{{- $_ := set $f "dispatcher-audience" $d.audience -}}
{{- $_ := set $f "dispatcher-log-level" $d.logLevel -}}
{{- $_ := set $f "dispatcher-cpu-request" (dig "requests" "cpu" "" $d.resources) -}}
{{- $_ := set $f "dispatcher-memory-request" (dig "requests" "memory" "" $d.resources) -}}
{{- $_ := set $f "dispatcher-cpu-limit" (dig "limits" "cpu" "" $d.resources) -}}
{{- $_ := set $f "dispatcher-memory-limit" (dig "limits" "memory" "" $d.resources) -}}
{{- $_ := set $f "dispatcher-ingest-port" $d.ports.ingest -}}
{{- $_ := set $f "dispatcher-metrics-port" $d.ports.metrics -}}
{{- $_ := set $f "dispatcher-health-port" $d.ports.health -}}
{{- $_ := set $f "dispatcher-delivery-api-port" $d.ports.deliveryAPI -}}
{{- $_ := set $f "dispatcher-node-selector" (ternary (toJson $d.nodeSelector) "" (not (empty $d.nodeSelector))) -}}
{{- $_ := set $f "dispatcher-tolerations" (ternary (toJson $d.tolerations) "" (not (empty $d.tolerations))) -}}
{{- $_ := set $f "dispatcher-affinity" (ternary (toJson $d.affinity) "" (not (empty $d.affinity))) -}}
{{- $_ := set $f "dispatcher-priority-class-name" $d.priorityClassName -}}
{{- toJson $f -}}
{{- end }}

{{/*
herald.managerArgs renders herald.managerFlags as container args, sorted by
flag. Numbers arrive as float64: whole ones are printed as integers (not
1e+06, which an int flag refuses), others as they are (a rate of 2.5).
*/}}
{{- define "herald.managerArgs" -}}
{{- range $flag, $value := include "herald.managerFlags" . | fromJson }}
{{- if or (kindIs "bool" $value) (ne (toString $value) "") }}
{{- $text := toString $value }}
{{- if and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value) }}
{{- $text = int64 $value | toString }}
{{- end }}
- {{ printf "--%s=%s" $flag $text | toJson }}
{{- end }}
{{- end }}
{{- end }}
