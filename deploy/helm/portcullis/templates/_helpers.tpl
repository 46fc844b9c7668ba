{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "portcullis.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release name, plus the chart name unless it already has it. */}}
{{- define "portcullis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret holding the tailnet auth key. */}}
{{- define "portcullis.authKeySecret" -}}
{{- required "authKey.secretName is required" .Values.authKey.secretName -}}
{{- end -}}

{{/* Paths inside the container; the [tailnet] section names them. */}}
{{- define "portcullis.configDir" -}}/etc/portcullis{{- end -}}
{{- define "portcullis.stateDir" -}}/var/lib/portcullis{{- end -}}
{{- define "portcullis.authKeyDir" -}}/var/run/secrets/portcullis{{- end -}}

{{/* The whole endpoints.toml: [tailnet] from values, then the rest. */}}
{{- define "portcullis.endpointsToml" -}}
{{- if regexMatch "(?m)^\\s*\\[\\s*tailnet\\s*\\]" .Values.endpoints -}}
{{- fail "values.endpoints must not contain [tailnet]: set tailnet.* in values instead (the chart writes that section)" -}}
{{- end -}}
# Rendered by the portcullis Helm chart, release {{ .Release.Name }}.
[tailnet]
control_url = {{ required "tailnet.controlUrl is required" .Values.tailnet.controlUrl | toJson }}
auth_key_file = {{ printf "%s/%s" (include "portcullis.authKeyDir" .) .Values.authKey.secretKey | toJson }}
state_dir = {{ include "portcullis.stateDir" . | toJson }}
hostname_prefix = {{ .Values.tailnet.hostnamePrefix | default "" | toJson }}
tags = {{ .Values.tailnet.tags | default list | toJson }}
ephemeral = {{ .Values.tailnet.ephemeral | default false }}

{{ .Values.endpoints }}
{{- end -}}
