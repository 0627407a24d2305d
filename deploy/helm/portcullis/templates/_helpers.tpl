{{/* The release's object names: the release name, or release-chart when they differ. */}}
{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Pod labels the Services, the PDB and the Deployment select on. */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* Every object's labels, but for the component. */}}
{{- define "portcullis.commonLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "portcullis.labels" -}}
{{ include "portcullis.commonLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* The metrics Service's labels, which a ServiceMonitor selects on. */}}
{{- define "portcullis.metricsLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: metrics
{{- end -}}

{{/* The base config: the chart's, with .Values.config merged over it. */}}
{{- define "portcullis.config" -}}
{{- $fullname := include "portcullis.fullname" . -}}
{{- $admin := dict "listen" (printf "0.0.0.0:%d" (int .Values.admin.port)) "allowed_hosts" (list (printf "%s-metrics.%s.svc" $fullname .Release.Namespace) (printf "%s-metrics.%s.svc.cluster.local" $fullname .Release.Namespace)) -}}
{{- $config := dict "listen" (dict "https" "0.0.0.0:443" "http" "0.0.0.0:80") "admin" $admin "tls" (dict "local_ca_dir" "/var/lib/portcullis/ca") "storage" "/var/lib/portcullis" "shutdown" (dict "drain_timeout" "30s") -}}
{{- if .Values.acme.enabled -}}
{{- $acme := dict -}}
{{- with .Values.acme.directory }}{{ $_ := set $acme "directory" . }}{{ end -}}
{{- with .Values.acme.email }}{{ $_ := set $acme "email" . }}{{ end -}}
{{- $_ := set $config "acme" $acme -}}
{{- end -}}
{{- if eq (include "portcullis.clusterStore" .) "kubernetes" -}}
{{- $_ := set $config "cluster" (dict "kubernetes" (dict "namespace" (include "portcullis.clusterStoreNamespace" .))) -}}
{{- end -}}
{{- if hasKey .Values.config "sites" -}}
{{- fail "config.sites: the Ingresses are the sites; the base config must not have any" -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $config (deepCopy .Values.config)) -}}
{{- end -}}

{{/* `config.cluster.store`: "kubernetes" makes the chart grant the store's RBAC. */}}
{{- define "portcullis.clusterStore" -}}
{{- dig "cluster" "store" "" .Values.config -}}
{{- end -}}

{{/* Where the Kubernetes cluster store lives: `config.cluster.kubernetes.namespace`, else
the release's namespace (written into the base config, so the two agree). */}}
{{- define "portcullis.clusterStoreNamespace" -}}
{{- dig "cluster" "kubernetes" "namespace" .Release.Namespace .Values.config -}}
{{- end -}}
