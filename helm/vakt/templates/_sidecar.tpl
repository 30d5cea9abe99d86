{{/*
Public named templates: the way to add vakt to a Deployment of another chart (way in (b)).
The chart's own Deployment uses exactly the same templates.

In your chart (with vakt as a dependency, so that .Values.vakt holds vakt's values and vakt
renders its ConfigMaps, ServiceAccount, Certificate, Service and NetworkPolicy itself):

  {{- $vakt := dict "Values" .Values.vakt "Release" .Release }}
  metadata:
    labels:      {{- include "vakt.podLabels" $vakt | nindent 8 }}
    annotations: {{- include "vakt.podAnnotations" $vakt | nindent 8 }}
  spec:
    serviceAccountName: {{ include "vakt.serviceAccountName" $vakt }}
    automountServiceAccountToken: false
    securityContext: {{- include "vakt.podSecurityContext" $vakt | nindent 8 }}
    initContainers:
      {{- with include "vakt.captureInit" $vakt }}{{ . | nindent 8 }}{{ end }}
      {{- if .Values.vakt.sidecar.native }}
      {{- include "vakt.sidecar" $vakt | nindent 8 }}
      {{- end }}
    containers:
      - name: app
        env: {{- include "vakt.appEnv" $vakt | nindent 12 }}
      {{- if not .Values.vakt.sidecar.native }}
      {{- include "vakt.sidecar" $vakt | nindent 6 }}
      {{- end }}
    volumes: {{- include "vakt.volumes" $vakt | nindent 8 }}

helm/examples/orders in the vakt repository is a complete example chart.
*/}}

{{/* The vakt container, as one list item for `containers` (or `initContainers` when native). */}}
{{- define "vakt.sidecar" -}}
- name: {{ .Values.sidecar.name }}
  image: {{ include "vakt.image" .Values.sidecar.image | quote }}
  imagePullPolicy: {{ .Values.sidecar.image.pullPolicy }}
  command: ["/vakt"]
  args: ["run", "--config", "{{ include "vakt.configDir" . }}/{{ include "vakt.configFile" . }}"]
  {{- if .Values.sidecar.native }}
  # Kubernetes native sidecar: started (and ready) before the app, stopped after it.
  restartPolicy: Always
  {{- end }}
  ports:
    {{- if .Values.config.inbound.enabled }}
    - name: vakt-mtls
      containerPort: {{ include "vakt.mtlsPort" . }}
      protocol: TCP
    {{- end }}
    - name: vakt-admin
      containerPort: {{ include "vakt.adminPort" . }}
      protocol: TCP
  {{- with .Values.sidecar.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /live
      port: {{ include "vakt.adminPort" . }}
      scheme: HTTP
    {{- toYaml .Values.sidecar.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /ready
      port: {{ include "vakt.adminPort" . }}
      scheme: HTTP
    {{- toYaml .Values.sidecar.probes.readiness | nindent 4 }}
  {{- if .Values.sidecar.native }}
  # The kubelet starts the app containers once this passes.
  startupProbe:
    httpGet:
      path: /ready
      port: {{ include "vakt.adminPort" . }}
      scheme: HTTP
    {{- toYaml .Values.sidecar.probes.startup | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    {{- include "vakt.sidecarSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: vakt-config
      mountPath: {{ include "vakt.configDir" . }}
      readOnly: true
    {{- if .Values.config.inbound.enabled }}
    # The policy ConfigMap is mounted as a directory (never subPath, which never updates) so
    # that vakt sees a new policy and hot-reloads it.
    - name: vakt-policy
      mountPath: {{ include "vakt.policyDir" . }}
      readOnly: true
    {{- end }}
    - name: vakt-identity
      mountPath: {{ include "vakt.identityDir" . }}
      readOnly: true
    - name: vakt-trust
      mountPath: {{ include "vakt.trustDir" . }}
      readOnly: true
    {{- range $i, $f := .Values.federation }}
    - name: vakt-federation-{{ $i }}
      mountPath: {{ include "vakt.federationDir" $ }}/{{ $f.trustDomain }}
      readOnly: true
    {{- end }}
    {{- if .Values.pseudonymisation.existingSecret }}
    - name: vakt-pseudonym
      mountPath: {{ include "vakt.pseudonymDir" . }}
      readOnly: true
    {{- end }}
    {{- if .Values.config.oidc.dpop.nonceSecret.existingSecret }}
    - name: vakt-dpop-nonce
      mountPath: {{ include "vakt.dpopNonceDir" . }}
      readOnly: true
    {{- end }}
    {{- if .Values.audit.chainKey.existingSecret }}
    - name: vakt-audit-chain-key
      mountPath: {{ include "vakt.auditKeyDir" . }}
      readOnly: true
    {{- end }}
    {{- if eq .Values.audit.sink "file" }}
    # The audit files and the checkpoints: the only volumes vakt writes.
    - name: vakt-audit
      mountPath: {{ include "vakt.auditDir" . }}
    - name: vakt-audit-checkpoints
      mountPath: {{ include "vakt.auditCheckpointDir" . }}
    {{- end }}
{{- end }}

{{/*
Transparent capture: the init container that installs the nftables rules in the pod's network
namespace and exits (`vakt net setup`), as one list item for `initContainers`, before vakt. It
is the only container with privileges: root in the pod's network namespace with NET_ADMIN
(nftables is configured over netlink; nothing else is needed). Empty in proxy mode.
*/}}
{{- define "vakt.captureInit" -}}
{{- if eq .Values.capture.mode "transparent" }}
{{- if kindIs "invalid" .Values.sidecar.runAsUser }}
{{- fail "capture.mode transparent: set sidecar.runAsUser: the rules exempt vakt's UID, which must be known before the pod starts" }}
{{- end }}
{{- $vaktUid := int64 .Values.sidecar.runAsUser }}
{{- $app := .Values.app.securityContext | default dict }}
{{- $pod := .Values.workload.podSecurityContext | default dict }}
{{- if kindIs "invalid" $app.runAsUser }}
{{- fail "capture.mode transparent: set app.securityContext.runAsUser (a UID other than sidecar.runAsUser): the rules redirect every UID but vakt's" }}
{{- end }}
{{- if eq (int64 $app.runAsUser) $vaktUid }}
{{- fail (printf "capture.mode transparent: app.securityContext.runAsUser (%d) is vakt's UID, so the app's connections would not be captured; give the app another UID" (int64 $app.runAsUser)) }}
{{- end }}
{{- if or (eq (int64 $app.runAsUser) 0) (eq (toString $app.runAsNonRoot) "false") (eq (toString $app.allowPrivilegeEscalation) "true") (eq (toString $app.privileged) "true") (($app.capabilities | default dict).add) }}
{{- fail "capture.mode transparent: the app must run as non-root without added capabilities or privilege escalation (app.securityContext): a process that can change its UID to vakt's escapes the capture" }}
{{- end }}
{{- if or (kindIs "invalid" $pod.runAsUser) (eq (int64 (default 0 $pod.runAsUser)) $vaktUid) }}
{{- fail (printf "capture.mode transparent: set workload.podSecurityContext.runAsUser to a UID other than vakt's (%d): containers without a UID of their own (debug containers, other sidecars) would run uncaptured" $vaktUid) }}
{{- end -}}
- name: {{ .Values.sidecar.name }}-init
  image: {{ include "vakt.image" .Values.capture.initImage | quote }}
  imagePullPolicy: {{ .Values.capture.initImage.pullPolicy }}
  command: ["/vakt"]
  args:
    - net
    - setup
    - --proxy-uid={{ int64 .Values.sidecar.runAsUser }}
    - --outbound-port={{ include "vakt.outboundPort" . }}
    - --inbound-port={{ include "vakt.mtlsPort" . }}
    - --admin-port={{ include "vakt.adminPort" . }}
    {{- if and .Values.capture.inbound .Values.config.inbound.enabled }}
    - --inbound-ports={{ int64 .Values.app.port }}
    {{- end }}
    {{- with .Values.capture.excludeOutboundCidrs }}
    - --exclude-outbound-cidrs={{ join "," . }}
    {{- end }}
    {{- with .Values.capture.excludeOutboundPorts }}
    - --exclude-outbound-ports={{ join "," . }}
    {{- end }}
    {{- if .Values.capture.allowUdp }}
    - --allow-udp
    {{- end }}
  resources:
    {{- toYaml .Values.capture.resources | nindent 4 }}
  securityContext:
    # nftables rules are changed as root with NET_ADMIN, in this pod's network namespace only.
    runAsNonRoot: false
    runAsUser: 0
    runAsGroup: 0
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    privileged: false
    capabilities:
      drop:
        - ALL
      add:
        - NET_ADMIN
    seccompProfile:
      type: RuntimeDefault
{{- end }}
{{- end }}

{{/*
An app probe as the kubelet gets it: an httpGet probe goes to vakt's admin port at
/app-health/<path>, which asks the app on loopback (the kubelet probes the pod IP, where the app
does not listen); vakt answers only the paths of the app's probes (vakt.appProbePaths). Other
probes unchanged. Context: dict "probe" "root".
*/}}
{{- define "vakt.appProbe" -}}
{{- $probe := deepCopy .probe }}
{{- with $probe.httpGet }}
{{- $_ := set . "port" (int64 (include "vakt.adminPort" $.root)) }}
{{- $_ := set . "path" (printf "/app-health%s" .path) }}
{{- $_ := set . "scheme" "HTTP" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* The paths of the app's httpGet probes, for vakt's inbound.app_probe_paths (a JSON list). */}}
{{- define "vakt.appProbePaths" -}}
{{- $paths := list }}
{{- range (list .Values.app.livenessProbe .Values.app.readinessProbe .Values.app.startupProbe) }}
{{- with . }}{{ with .httpGet }}{{ $paths = append $paths .path }}{{ end }}{{ end }}
{{- end }}
{{- toJson ($paths | uniq) }}
{{- end }}

{{/* The pod volumes vakt needs, as list items for `volumes` (only vakt mounts the Secrets). */}}
{{- define "vakt.volumes" -}}
- name: vakt-config
  configMap:
    name: {{ include "vakt.configMapName" . }}
{{- if .Values.config.inbound.enabled }}
- name: vakt-policy
  configMap:
    name: {{ include "vakt.policyConfigMapName" . }}
{{- end }}
- name: vakt-identity
  {{- if eq .Values.identity.source "csi" }}
  # The pod's own X509-SVID from csi-driver-spiffe: key made on the node for this pod, certificate
  # for this pod's service account, renewed in place; only the vakt container mounts it.
  csi:
    driver: {{ .Values.identity.csi.driver }}
    readOnly: true
    volumeAttributes:
      spiffe.csi.cert-manager.io/fs-group: {{ include "vakt.csiFsGroup" . | quote }}
  {{- else }}
  secret:
    secretName: {{ include "vakt.identitySecretName" . }}
    # 0440: readable by the pod's fsGroup (vakt's group) only; only the vakt container mounts it.
    defaultMode: 288
  {{- end }}
- name: vakt-trust
  {{- if eq .Values.trustBundle.source "secret" }}
  secret:
    secretName: {{ .Values.trustBundle.name }}
  {{- else }}
  configMap:
    name: {{ .Values.trustBundle.name }}
  {{- end }}
{{- range $i, $f := .Values.federation }}
- name: vakt-federation-{{ $i }}
  {{- if eq $f.source "secret" }}
  secret:
    secretName: {{ $f.name }}
  {{- else }}
  configMap:
    name: {{ $f.name }}
  {{- end }}
{{- end }}
{{- with .Values.pseudonymisation.existingSecret }}
- name: vakt-pseudonym
  secret:
    secretName: {{ . }}
    defaultMode: 288
{{- end }}
{{- with .Values.config.oidc.dpop.nonceSecret.existingSecret }}
- name: vakt-dpop-nonce
  secret:
    secretName: {{ . }}
    defaultMode: 288
{{- end }}
{{- with .Values.audit.chainKey.existingSecret }}
- name: vakt-audit-chain-key
  secret:
    secretName: {{ . }}
    defaultMode: 288
{{- end }}
{{- if eq .Values.audit.sink "file" }}
- name: vakt-audit
  {{- if eq .Values.audit.file.volume "persistentVolumeClaim" }}
  persistentVolumeClaim:
    claimName: {{ .Values.audit.file.claimName }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.audit.file.sizeLimit }}
  {{- end }}
# Checkpoints on a volume of their own (and on stdout), not the audit files'.
- name: vakt-audit-checkpoints
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- end }}

{{/*
Environment of the app container: its outbound HTTP goes through vakt (plain HTTP to the local
proxy; vakt originates mTLS), loopback stays direct. Both spellings, since tools differ.
*/}}
{{- define "vakt.appEnv" -}}
{{- if and .Values.config.outbound.enabled (eq .Values.capture.mode "proxy") -}}
- name: HTTP_PROXY
  value: "http://127.0.0.1:{{ include "vakt.outboundPort" . }}"
- name: http_proxy
  value: "http://127.0.0.1:{{ include "vakt.outboundPort" . }}"
- name: NO_PROXY
  value: "localhost,127.0.0.1,::1"
- name: no_proxy
  value: "localhost,127.0.0.1,::1"
{{- end }}
{{- end }}

{{/* Pod labels: the one the Service, NetworkPolicy and PodDisruptionBudget select on. */}}
{{- define "vakt.podLabels" -}}
{{ include "vakt.workloadLabels" . }}
{{- end }}

{{/*
Pod annotations: the checksum of the sidecar config, so a config change rolls the pods. The
policy is deliberately left out: vakt hot-reloads it from the mounted ConfigMap.
*/}}
{{- define "vakt.podAnnotations" -}}
checksum/config: {{ include "vakt.configChecksum" . }}
{{- end }}

{{/* The pod securityContext: fsGroup is needed for vakt to read the mounted private key. */}}
{{- define "vakt.podSecurityContext" -}}
{{ toYaml .Values.workload.podSecurityContext }}
{{- end }}
