{{/* The release-scoped name prefix of every object. */}}
{{- define "ccm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ccm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "ingest"). */}}
{{- define "ccm.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ccm.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ccm.secretName" -}}
{{- .Values.secret.existingSecret | default (printf "%s-secrets" (include "ccm.fullname" .)) -}}
{{- end -}}

{{- define "ccm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "ccm.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/*
The configuration file every service reads: the user's `config` with the settings the chart
owns (listen addresses, file paths) laid over it, so the pods and their Services agree.
*/}}
{{- define "ccm.configFile" -}}
{{- $owned := dict
  "ingest" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ingest.port)))
  "retrier" (dict "policy_file" "/etc/ccm/retry.yaml")
-}}
{{- range $component := list "dialer" "retrier" "projector" "webhooks" -}}
{{- $m := (index $.Values $component).metrics -}}
{{- if $m.enabled -}}
{{- $section := get $owned $component | default dict -}}
{{- $_ := set $section "metrics_listen" (printf "0.0.0.0:%d" (int $m.port)) -}}
{{- $_ := set $owned $component $section -}}
{{- end -}}
{{- end -}}
{{- $merged := mergeOverwrite (deepCopy .Values.config) $owned -}}
{{- $_ := set $merged "nats_url" (include "ccm.natsUrl" .) -}}
{{- /* The provisioning Job does it once per install/upgrade; the services skip it. */ -}}
{{- if include "ccm.provisionJob" . -}}
{{- $_ := set $merged "provision" false -}}
{{- end -}}
{{- toYaml $merged -}}
{{- end -}}


{{/*
The NATS URL of every service: the bundled NATS chart's client Service when `nats.enabled`
(named as that chart names it: `nats.fullnameOverride`, else the release name followed by
`-nats` unless the release name already contains `nats`), otherwise the external
`nats.url`.
*/}}
{{- define "ccm.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- $name := .Values.nats.fullnameOverride | default "" -}}
{{- if not $name -}}
{{- if contains "nats" .Release.Name -}}
{{- $name = .Release.Name -}}
{{- else -}}
{{- $name = printf "%s-nats" .Release.Name -}}
{{- end -}}
{{- end -}}
{{- printf "nats://%s:4222" ($name | trunc 63 | trimSuffix "-") -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/*
Whether the provisioning Job runs ("true" or empty): not with the bundled NATS chart, whose
servers only start with the release, after the pre-install hooks.
*/}}
{{- define "ccm.provisionJob" -}}
{{- if and .Values.provisioning.enabled (not .Values.nats.enabled) -}}true{{- end -}}
{{- end -}}
