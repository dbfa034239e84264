{{- define "ai-assets.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ai-assets.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ai-assets.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ai-assets.serviceAccountName" -}}
{{- default (include "ai-assets.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "ai-assets.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ai-assets.webserverUrl" -}}
{{- if .Values.webserverUrl -}}
{{ .Values.webserverUrl }}
{{- else if and .Values.webserver.ingress.enabled .Values.webserver.ingress.host -}}
{{ ternary "https" "http" (gt (len .Values.webserver.ingress.tls) 0) }}://{{ .Values.webserver.ingress.host }}
{{- else -}}
http://{{ include "ai-assets.fullname" . }}-webserver.{{ .Release.Namespace }}.svc
{{- end -}}
{{- end -}}

{{/* The pod spec every Dagster process shares: instance, env, security, scheduling. */}}
{{- define "ai-assets.podSpec" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "ai-assets.serviceAccountName" $root }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: dagster-instance
    configMap:
      name: {{ include "ai-assets.fullname" $root }}-instance
  - name: dagster-workspace
    configMap:
      name: {{ include "ai-assets.fullname" $root }}-workspace
containers:
  - name: {{ .component }}
    image: {{ include "ai-assets.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
      {{- if eq $root.Values.logFormat "json" }}
      - --log-format
      - json
      {{- end }}
    envFrom:
      - configMapRef:
          name: {{ include "ai-assets.fullname" $root }}-env
      {{- if .appSecrets }}
      - secretRef:
          name: {{ $root.Values.secrets.existingSecret }}
      {{- end }}
    env:
      - name: DAGSTER_PG_PASSWORD
        valueFrom:
          secretKeyRef:
            name: {{ $root.Values.postgresql.existingSecret }}
            key: postgresql-password
      {{- if and .appSecrets $root.Values.slack.existingSecret }}
      - name: SLACK_BOT_TOKEN
        valueFrom:
          secretKeyRef:
            name: {{ $root.Values.slack.existingSecret }}
            key: SLACK_BOT_TOKEN
      {{- end }}
    {{- with .ports }}
    ports:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .probes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    resources:
      {{- toYaml .resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: dagster-instance
        mountPath: /opt/dagster/dagster_home/dagster.yaml
        subPath: dagster.yaml
        readOnly: true
      - name: dagster-workspace
        mountPath: /opt/dagster/workspace/workspace.yaml
        subPath: workspace.yaml
        readOnly: true
{{- end -}}

{{/*
The instance's compute_logs: dagster-aws's S3 manager where computeLogs.bucket is set, else none
(a pod's own disk is out of the webserver's reach). Never under the images the sensor watches.
*/}}
{{- define "ai-assets.computeLogs" -}}
{{- $logs := .Values.computeLogs -}}
{{- if $logs.bucket -}}
{{- /* the manager writes under its prefix without the slashes around it, then "/" */ -}}
{{- $keys := printf "%s/" (trimAll "/" $logs.prefix) -}}
{{- if and (eq $logs.bucket .Values.s3.bucket) (hasPrefix .Values.s3.prefix $keys) -}}
{{- fail (printf "computeLogs.prefix %q is under s3.prefix %q of the images bucket: the sensor would classify the logs" $logs.prefix .Values.s3.prefix) -}}
{{- end }}
compute_logs:
  module: dagster_aws.s3.compute_log_manager
  class: S3ComputeLogManager
  config:
    bucket: {{ $logs.bucket | quote }}
    prefix: {{ $logs.prefix | quote }}
    region: {{ .Values.s3.region | quote }}
    {{- with .Values.s3.endpointUrl }}
    endpoint_url: {{ . | quote }}
    {{- end }}
    {{- if $logs.uploadIntervalSeconds }}
    upload_interval: {{ $logs.uploadIntervalSeconds }}
    {{- end }}
{{- else }}
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
{{- end }}
{{- end }}
