{{/*
Helpers shared by the chart's own templates and by the public named templates in _sidecar.tpl.

Every helper here takes a context with at least .Values (the vakt values) and .Release, and
never reads .Chart or .Files: another chart that includes "vakt.sidecar" calls them with its own
(dict "Values" .Values.vakt "Release" .Release), so nothing may depend on which chart is rendering.
For the same reason the chart name is the constant "vakt" rather than .Chart.Name.
*/}}

{{/* Fixed paths inside the vakt container. The image's ENTRYPOINT uses the config path too. */}}
{{- define "vakt.configDir" -}}/etc/vakt{{- end }}
{{- define "vakt.configFile" -}}vakt.yaml{{- end }}
{{- define "vakt.policyDir" -}}/var/run/vakt/policy{{- end }}
{{- define "vakt.identityDir" -}}/var/run/vakt/identity{{- end }}
{{- define "vakt.trustDir" -}}/var/run/vakt/trust{{- end }}
{{- define "vakt.federationDir" -}}/var/run/vakt/federation{{- end }}
{{- define "vakt.pseudonymDir" -}}/var/run/vakt/pseudonym{{- end }}
{{- define "vakt.dpopNonceDir" -}}/var/run/vakt/dpop-nonce{{- end }}
{{- define "vakt.auditDir" -}}/var/log/vakt{{- end }}
{{- define "vakt.auditCheckpointDir" -}}/var/lib/vakt-checkpoints{{- end }}
{{- define "vakt.auditKeyDir" -}}/var/run/vakt/audit-chain{{- end }}

{{/* vakt's fixed ports (the listen addresses in the rendered config use the same numbers). */}}
{{- define "vakt.mtlsPort" -}}15443{{- end }}
{{- define "vakt.outboundPort" -}}15001{{- end }}
{{- define "vakt.adminPort" -}}15021{{- end }}

{{- define "vakt.name" -}}
{{- default "vakt" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-vakt", or the release name when it already contains the chart name. */}}
{{- define "vakt.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "vakt.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Standard labels of every resource the chart renders itself. */}}
{{- define "vakt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "vakt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vakt
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The Deployment's selector (way in (a)). */}}
{{- define "vakt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vakt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The label that marks the pods carrying this release's vakt sidecar. The Service, the
NetworkPolicy and the PodDisruptionBudget select on it alone, so they work the same for the
chart's own Deployment and for a Deployment of another chart (which adds "vakt.podLabels").
*/}}
{{- define "vakt.workloadLabels" -}}
vakt.io/workload: {{ include "vakt.fullname" . }}
{{- end }}

{{- define "vakt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vakt.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false (the SPIFFE ID names the account)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The workload's SPIFFE ID: spiffe://<trust domain>/ns/<namespace>/sa/<service account>. */}}
{{- define "vakt.spiffeId" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.trustDomain .Release.Namespace (include "vakt.serviceAccountName" .) }}
{{- end }}

{{- define "vakt.configMapName" -}}
{{- printf "%s-config" (include "vakt.fullname" .) }}
{{- end }}

{{- define "vakt.policyConfigMapName" -}}
{{- default (printf "%s-policy" (include "vakt.fullname" .)) .Values.policy.existingConfigMap }}
{{- end }}

{{/* The key of the policy in its ConfigMap: our own ConfigMap always uses policy.yaml. */}}
{{- define "vakt.policyKey" -}}
{{- if .Values.policy.existingConfigMap }}{{ .Values.policy.key }}{{ else }}policy.yaml{{ end }}
{{- end }}

{{- define "vakt.identitySecretName" -}}
{{- if eq .Values.identity.source "existingSecret" }}
{{- required "identity.existingSecret.name is required when identity.source is existingSecret" .Values.identity.existingSecret.name }}
{{- else }}
{{- default (printf "%s-identity" (include "vakt.fullname" .)) .Values.identity.certificate.secretName }}
{{- end }}
{{- end }}

{{/* The file names in the identity volume: csi-driver-spiffe and cert-manager both write tls.crt and tls.key. */}}
{{- define "vakt.certKey" -}}
{{- if eq .Values.identity.source "existingSecret" }}{{ .Values.identity.existingSecret.certKey }}{{ else }}tls.crt{{ end }}
{{- end }}

{{- define "vakt.keyKey" -}}
{{- if eq .Values.identity.source "existingSecret" }}{{ .Values.identity.existingSecret.keyKey }}{{ else }}tls.key{{ end }}
{{- end }}

{{/*
The group csi-driver-spiffe gives the key files (mode 0440): identity.csi.fsGroup, else the pod's
fsGroup, else vakt's group. Without any, the files would be root's and vakt could not read them.
*/}}
{{- define "vakt.csiFsGroup" -}}
{{- $c := .Values.identity.csi }}
{{- $pod := .Values.workload.podSecurityContext }}
{{- if not (kindIs "invalid" $c.fsGroup) }}{{ int64 $c.fsGroup }}
{{- else if not (kindIs "invalid" $pod.fsGroup) }}{{ int64 $pod.fsGroup }}
{{- else if not (kindIs "invalid" .Values.sidecar.runAsGroup) }}{{ int64 .Values.sidecar.runAsGroup }}
{{- else }}{{ fail "identity.source csi: set identity.csi.fsGroup (a group vakt runs in, e.g. the fsGroup the platform assigns): the driver writes the key readable by that group only" }}
{{- end }}
{{- end }}

{{/* The approver-policy CertificateRequestPolicy's name: cluster-scoped, so namespace and release. */}}
{{- define "vakt.certificateRequestPolicyName" -}}
{{- printf "vakt-%s-%s" .Release.Namespace (include "vakt.fullname" .) | trunc 253 | trimSuffix "-" }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: the digest wins over the tag. */}}
{{- define "vakt.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{/*
The vakt sidecar config (vakt.yaml). Built as a dict and serialised with toYaml, so values are
quoted correctly whatever they contain. Keys are vakt's own (config/vakt.example.yaml); the
listen addresses, file paths and log format are fixed by the chart. The policy is NOT in here
(it is a file of its own), so the checksum over this text changes only with the sidecar config.
*/}}
{{- define "vakt.configYaml" -}}
{{- $v := .Values }}
{{- $c := $v.config }}
{{- $l := $c.limits }}
{{- $federation := list }}
{{- range $v.federation }}
{{- $federation = append $federation (dict "trust_domain" .trustDomain "bundle" (printf "%s/%s/%s" (include "vakt.federationDir" $) .trustDomain .key)) }}
{{- end }}
{{- $identity := dict
    "trust_domain" $v.trustDomain
    "federation" $federation
    "cert" (printf "%s/%s" (include "vakt.identityDir" .) (include "vakt.certKey" .))
    "key" (printf "%s/%s" (include "vakt.identityDir" .) (include "vakt.keyKey" .))
    "trust_bundle" (printf "%s/%s" (include "vakt.trustDir" .) $v.trustBundle.key)
    "reload_interval" $c.reloadInterval }}
{{- $limits := dict
    "handshake_timeout" $l.handshakeTimeout
    "header_read_timeout" $l.headerReadTimeout
    "max_header_bytes" (int64 $l.maxHeaderBytes)
    "idle_timeout" $l.idleTimeout
    "first_request_timeout" $l.firstRequestTimeout
    "upstream_connect_timeout" $l.upstreamConnectTimeout
    "upstream_response_timeout" $l.upstreamResponseTimeout
    "http2_max_concurrent_streams" (int64 $l.http2MaxConcurrentStreams)
    "upstream_pool_idle_timeout" $l.upstreamPoolIdleTimeout
    "upstream_pool_max_idle_per_host" (int64 $l.upstreamPoolMaxIdlePerHost)
    "max_connections" (int64 $l.maxConnections)
    "max_connections_per_peer" (int64 $l.maxConnectionsPerPeer)
    "request_body_timeout" $l.requestBodyTimeout
    "request_body_rate_window" $l.requestBodyRateWindow
    "tunnel_idle_timeout" $l.tunnelIdleTimeout }}
{{- if gt (int64 $l.requestBodyMinRate) 0 }}
{{- $_ := set $limits "request_body_min_rate" (int64 $l.requestBodyMinRate) }}
{{- end }}
{{- $cfg := dict
    "identity" $identity
    "tls" (dict "min_version" (toString $c.tlsMinVersion))
    "admin" (dict "listen" (printf "0.0.0.0:%s" (include "vakt.adminPort" .)) "workload" (include "vakt.workloadName" .))
    "limits" $limits
    "shutdown" (dict "grace_period" $c.shutdownGracePeriod)
    "log" (dict "format" "json" "level" $c.logLevel) }}
{{- if $c.inbound.enabled }}
{{- $_ := set $cfg "inbound" (dict
    "listen" (printf "0.0.0.0:%s" (include "vakt.mtlsPort" .))
    "app" (printf "127.0.0.1:%d" (int64 $v.app.port))
    "app_protocol" $v.app.protocol
    "policy" (printf "%s/%s" (include "vakt.policyDir" .) (include "vakt.policyKey" .))
    "strip_headers" $c.inbound.stripHeaders) }}
{{- with fromJsonArray (include "vakt.appProbePaths" .) }}
{{- $_ := set $cfg.inbound "app_probe_paths" . }}
{{- end }}
{{- with $v.app.healthPath }}
{{- $_ := set $cfg.inbound "app_health" . }}
{{- end }}
{{- end }}
{{- if $c.outbound.enabled }}
{{- $upstreams := list }}
{{- range $c.outbound.upstreams }}
{{- if .passthrough }}
{{- $upstreams = append $upstreams (dict "authority" .authority "passthrough" .passthrough) }}
{{- else }}
{{- $upstreams = append $upstreams (dict "authority" .authority "address" .address "spiffe_id" .spiffeId) }}
{{- end }}
{{- end }}
{{- $outbound := dict
    "listen" (printf "127.0.0.1:%s" (include "vakt.outboundPort" .))
    "upstreams" $upstreams }}
{{- if eq $v.capture.mode "transparent" }}
{{- $_ := set $outbound "capture" "transparent" }}
{{- end }}
{{- $_ := set $cfg "outbound" $outbound }}
{{- end }}
{{- with $c.oidc.issuers }}
{{- $issuers := list }}
{{- range . }}
{{- $i := dict "issuer" .issuer "profile" .profile "audiences" .audiences }}
{{- with .algorithms }}{{ $_ := set $i "algorithms" . }}{{ end }}
{{- with .tokenTypes }}{{ $_ := set $i "token_types" . }}{{ end }}
{{- with .leeway }}{{ $_ := set $i "leeway" . }}{{ end }}
{{- with .maxTokenLifetime }}{{ $_ := set $i "max_token_lifetime" . }}{{ end }}
{{- with .discoveryUrl }}{{ $_ := set $i "discovery_url" . }}{{ end }}
{{- with .dpop }}
{{- $d := dict }}
{{- if hasKey . "required" }}{{ $_ := set $d "required" .required }}{{ end }}
{{- with .algorithms }}{{ $_ := set $d "algorithms" . }}{{ end }}
{{- if hasKey . "requireNonce" }}{{ $_ := set $d "require_nonce" .requireNonce }}{{ end }}
{{- with .publicUrl }}{{ $_ := set $d "public_url" . }}{{ end }}
{{- $_ := set $i "dpop" $d }}
{{- end }}
{{- $issuers = append $issuers $i }}
{{- end }}
{{- $o := $c.oidc }}
{{- $dpop := dict
    "proof_window" $o.dpop.proofWindow
    "replay_cache" (int64 $o.dpop.replayCache)
    "nonce_lifetime" $o.dpop.nonceLifetime }}
{{- with $o.dpop.publicUrl }}{{ $_ := set $dpop "public_url" . }}{{ end }}
{{- with $o.dpop.nonceSecret.existingSecret }}
{{- $_ := set $dpop "nonce_secret_file" (printf "%s/%s" (include "vakt.dpopNonceDir" $) $o.dpop.nonceSecret.key) }}
{{- end }}
{{- $_ := set $cfg "oidc" (dict
    "issuers" $issuers
    "jwks_refresh_min" $o.jwksRefreshMin
    "jwks_refresh_max" $o.jwksRefreshMax
    "jwks_max_staleness" $o.jwksMaxStaleness
    "verified_token_cache" (int64 $o.verifiedTokenCache)
    "max_token_bytes" (int64 $o.maxTokenBytes)
    "dpop" $dpop) }}
{{- with $o.httpsProxy }}{{ $_ := set $cfg.oidc "https_proxy" . }}{{ end }}
{{- end }}
{{- $a := $v.audit }}
{{- $audit := dict
    "sink" $a.sink
    "on_audit_failure" $a.onFailure
    "queue_capacity" (int64 $a.queueCapacity)
    "checkpoint_interval" $a.checkpoints.interval
    "checkpoint_every" (int64 $a.checkpoints.every)
    "checkpoint_stdout" $a.checkpoints.stdout }}
{{- with $a.redactPatterns }}{{ $_ := set $audit "redact_patterns" . }}{{ end }}
{{- with $a.chainKey.existingSecret }}
{{- $_ := set $audit "chain_key" (dict
    "key_file" (printf "%s/%s" (include "vakt.auditKeyDir" $) $a.chainKey.key)
    "key_id" $a.chainKey.keyId) }}
{{- end }}
{{- if eq $a.sink "file" }}
{{- if not $a.chainKey.existingSecret }}
{{- fail "audit.sink file needs audit.chainKey.existingSecret: the chain's key must live off the audit volume (vakt refuses to start without it)" }}
{{- end }}
{{- if and (eq $a.file.volume "persistentVolumeClaim") (not $a.file.claimName) }}
{{- fail "audit.file.volume persistentVolumeClaim needs audit.file.claimName" }}
{{- end }}
{{- $_ := set $audit "file" (dict
    "path" (printf "%s/audit.log" (include "vakt.auditDir" $))
    "max_bytes" (int64 $a.file.maxBytes)
    "max_files" (int64 $a.file.maxFiles)
    "fsync" $a.file.fsync) }}
{{- $_ := set $audit "checkpoint_file" (printf "%s/audit-checkpoints.jsonl" (include "vakt.auditCheckpointDir" $)) }}
{{- end }}
{{- $_ := set $cfg "audit" $audit }}
{{- with $v.pseudonymisation.existingSecret }}
{{- $_ := set $cfg "pseudonymisation" (dict
    "key_file" (printf "%s/%s" (include "vakt.pseudonymDir" $) $v.pseudonymisation.key)
    "key_id" $v.pseudonymisation.keyId) }}
{{- end -}}
# vakt sidecar config, rendered by the vakt Helm chart from its values.
# Every key is documented in config/vakt.example.yaml of the vakt repository.
{{ toYaml $cfg }}
{{- end }}

{{/* sha256 of the sidecar config: the pod template's checksum/config annotation. */}}
{{- define "vakt.configChecksum" -}}
{{- include "vakt.configYaml" . | sha256sum }}
{{- end }}

{{/* The policy file: policy.text verbatim, else policy.document as YAML. */}}
{{- define "vakt.policyYaml" -}}
{{- if .Values.policy.text }}
{{- .Values.policy.text }}
{{- else }}
{{- toYaml .Values.policy.document }}
{{- end }}
{{- end }}

{{/* The hardened securityContext of the vakt container (not configurable apart from the IDs). */}}
{{- define "vakt.sidecarSecurityContext" -}}
runAsNonRoot: true
{{- if not (kindIs "invalid" .Values.sidecar.runAsUser) }}
runAsUser: {{ int64 .Values.sidecar.runAsUser }}
{{- end }}
{{- if not (kindIs "invalid" .Values.sidecar.runAsGroup) }}
runAsGroup: {{ int64 .Values.sidecar.runAsGroup }}
{{- end }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The headless Service the ServiceMonitor scrapes (admin port only). */}}
{{- define "vakt.metricsServiceName" -}}
{{- printf "%s-metrics" (include "vakt.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "vakt.metricsServiceLabels" -}}
vakt.io/metrics: "true"
{{- end }}

{{/*
PromQL label matchers that select this workload's vakt series: by default the namespace and the
job the ServiceMonitor gives them (the metrics Service's name).
*/}}
{{/* The workload name vakt puts on every metric (admin.workload): <namespace>/<fullname>. */}}
{{- define "vakt.workloadName" -}}
{{- printf "%s/%s" .Release.Namespace (include "vakt.fullname" .) }}
{{- end }}

{{- define "vakt.alertSelector" -}}
{{- default (printf "vakt_workload=%q" (include "vakt.workloadName" .)) .Values.metrics.prometheusRule.selector }}
{{- end }}

{{/* Alert labels: the severity, then the installer's own (context: dict severity, extra). */}}
{{- define "vakt.alertLabels" -}}
severity: {{ .severity }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}
