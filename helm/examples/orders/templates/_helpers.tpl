{{- define "orders.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "orders.selectorLabels" -}}
app.kubernetes.io/name: orders
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
