{{/* Object name prefix: <release>-lemzha, or the release name when it already contains the chart name. */}}
{{- define "lemzha.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lemzha.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "lemzha.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lemzha.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lemzha.labels" -}}
{{ include "lemzha.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The namespaces kopf watches when not cluster-wide: the list, or the release namespace. */}}
{{- define "lemzha.namespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- toYaml .Values.watch.namespaces -}}
{{- else -}}
{{- toYaml (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* The kopf peering object's name: the release's, so two releases never share one. */}}
{{- define "lemzha.peering" -}}
{{- include "lemzha.fullname" . -}}
{{- end -}}

{{- define "lemzha.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where an overriding bundle (volume or init container) is mounted. */}}
{{- define "lemzha.bundleOverride" -}}
{{- if or .Values.bundle.volume .Values.bundle.initContainer.image -}}true{{- end -}}
{{- end -}}

{{/* The restricted securityContext every container gets (Pod Security Standard "restricted"). */}}
{{- define "lemzha.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* NetworkPolicy peers from {cidrs, namespaceSelector, podSelector}: one ipBlock per CIDR, one selector peer. */}}
{{- define "lemzha.egressPeers" -}}
{{- $peers := list -}}
{{- range .cidrs }}{{ $peers = append $peers (dict "ipBlock" (dict "cidr" .)) }}{{ end -}}
{{- $sel := dict -}}
{{- with .namespaceSelector }}{{ $_ := set $sel "namespaceSelector" . }}{{ end -}}
{{- with .podSelector }}{{ $_ := set $sel "podSelector" . }}{{ end -}}
{{- if $sel }}{{ $peers = append $peers $sel }}{{ end -}}
{{- toYaml $peers -}}
{{- end -}}

{{- define "lemzha.egressPorts" -}}
{{- $ports := list -}}
{{- range .ports }}{{ $ports = append $ports (dict "protocol" "TCP" "port" .) }}{{ end -}}
{{- toYaml $ports -}}
{{- end -}}

{{- define "lemzha.incidentRules" -}}
# the project's custom resources and their status: kopf patches both; the TTL janitor lists and deletes
- apiGroups: [lemzha.io]
  resources: [rcaincidents]
  verbs: [get, list, watch, create, update, patch, delete, deletecollection]
- apiGroups: [lemzha.io]
  resources: [rcaincidents/status]
  verbs: [get, update, patch]
# kopf posts events about handler progress (core v1 events)
- apiGroups: [""]
  resources: [events]
  verbs: [get, list, watch, create]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- end -}}

{{/* alerts.podSelectorLabels as LEMZHA_ALERTS_SELECTOR_LABELS: alertLabel=podLabel, comma-separated, in order. */}}
{{- define "lemzha.alertSelectorLabels" -}}
{{- $pairs := list -}}
{{- range .podSelectorLabels }}{{ $pairs = append $pairs (printf "%s=%s" .alertLabel .podLabel) }}{{ end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* The recording-rule files for recordingRules.latencySource: the Kubernetes groups, plus the latency source's
(generated from the catalog by `python -m lemzha.recording_rules`). */}}
{{- define "lemzha.ruleFiles" -}}
{{- $files := list "files/rules/kubernetes.yaml" -}}
{{- if ne .Values.recordingRules.latencySource "none" -}}
{{- $files = append $files (printf "files/rules/%s.yaml" .Values.recordingRules.latencySource) -}}
{{- end -}}
{{- toYaml $files -}}
{{- end -}}
