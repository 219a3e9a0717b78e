{{/* Common labels. */}}
{{- define "mesh.labels" -}}
app.kubernetes.io/name: mesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* Labels that select the controller's pods. */}}
{{- define "mesh.selector" -}}
app.kubernetes.io/name: mesh
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The name shared by the controller's objects. */}}
{{- define "mesh.name" -}}mesh{{- end }}
