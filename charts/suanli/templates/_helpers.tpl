{{/* Names are cut to 63 characters: Kubernetes label values and DNS labels allow no more. */}}

{{- define "suanli.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "suanli.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "suanli.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "suanli.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The Suanli scheduler's Deployment, Service, Secret and service account. */}}
{{- define "suanli.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "suanli.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The second kube-scheduler, which calls the Suanli scheduler as its extender. */}}
{{- define "suanli.kubeScheduler.fullname" -}}
{{- printf "%s-kube-scheduler" (include "suanli.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "suanli.agent.fullname" -}}
{{- printf "%s-agent" (include "suanli.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "suanli.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "suanli.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "suanli.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels are immutable on Deployments and DaemonSets: never add to them. */}}
{{- define "suanli.scheduler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "suanli.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: scheduler
{{- end -}}

{{- define "suanli.kubeScheduler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "suanli.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kube-scheduler
{{- end -}}

{{- define "suanli.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "suanli.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}
