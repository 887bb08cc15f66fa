{{/* The image of both components. */}}
{{- define "vpc-cni.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/*
The release's namespace must be vpc-cni-system: the node-scope policy names
the agents' service account by it, and the zone webhook's certificate is
made for vpc-cni-webhook.vpc-cni-system.svc.
*/}}
{{- define "vpc-cni.namespace" -}}
{{- if ne .Release.Namespace "vpc-cni-system" -}}
{{- fail (printf "vpc-cni installs into the namespace vpc-cni-system only (helm install ... -n vpc-cni-system), not %q" .Release.Namespace) -}}
{{- end -}}
vpc-cni-system
{{- end }}

{{/* A pod template annotation that changes with the ConfigMap, so a changed value rolls the pods. */}}
{{- define "vpc-cni.configChecksum" -}}
checksum/config: {{ toJson .Values.config | sha256sum }}
{{- end }}

{{/* The environment both components read from the ConfigMap. */}}
{{- define "vpc-cni.configEnv" -}}
- name: KUBERNETES_SERVICE_HOST
  valueFrom: {configMapKeyRef: {name: vpc-cni-config, key: kubernetes-service-host, optional: true}}
- name: KUBERNETES_SERVICE_PORT
  valueFrom: {configMapKeyRef: {name: vpc-cni-config, key: kubernetes-service-port, optional: true}}
- name: VPC_CNI_CLOUD_ENDPOINT
  valueFrom: {configMapKeyRef: {name: vpc-cni-config, key: cloud-endpoint}}
- name: VPC_CNI_METADATA_URL
  valueFrom: {configMapKeyRef: {name: vpc-cni-config, key: metadata-url}}
- name: VPC_CNI_CLUSTER_NAME
  valueFrom: {configMapKeyRef: {name: vpc-cni-config, key: cluster-name}}
{{- end }}
