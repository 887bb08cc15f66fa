//! Cluster DNS: CoreDNS as a Deployment behind the `kube-dns` Service, as
//! a user's cluster has it (kubeadm's addon, trimmed to what a cluster
//! without internet needs). The image is made locally by
//! `scripts/k8s-bins.sh` from the binary it builds from CoreDNS's Go module.

/// The CoreDNS release the binary is built from (kubeadm's for v1.34).
pub const COREDNS_VERSION: &str = "v1.12.1";
/// Its image, made locally.
pub const COREDNS_IMAGE: &str = "localhost/coredns:v1.12.1";
/// The `kube-dns` Service's ClusterIP, the kubelets' `clusterDNS`.
pub const DNS_SERVICE_IP: &str = "172.20.0.10";
/// The cluster's domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Everything CoreDNS needs, for `kubectl apply -f -`. No `forward`: the
/// simulation has no upstream resolver, so names outside the cluster fail
/// at once instead of timing out.
pub fn manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects: [{{kind: ServiceAccount, name: coredns, namespace: kube-system}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:53 {{
        errors
        health :8080
        ready :8181
        kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }}
        cache 30
        loop
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      terminationGracePeriodSeconds: 5
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm: {{topologyKey: kubernetes.io/hostname, labelSelector: {{matchLabels: {{k8s-app: kube-dns}}}}}}
      containers:
      - name: coredns
        image: {COREDNS_IMAGE}
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {{name: dns, containerPort: 53, protocol: UDP}}
        - {{name: dns-tcp, containerPort: 53, protocol: TCP}}
        volumeMounts: [{{name: config, mountPath: /etc/coredns, readOnly: true}}]
        livenessProbe: {{httpGet: {{path: /health, port: 8080}}, periodSeconds: 10, failureThreshold: 5}}
        readinessProbe: {{httpGet: {{path: /ready, port: 8181}}, periodSeconds: 2}}
        securityContext:
          capabilities: {{add: [NET_BIND_SERVICE]}}
      volumes:
      - name: config
        configMap: {{name: coredns, items: [{{key: Corefile, path: Corefile}}]}}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns, kubernetes.io/name: CoreDNS}}
spec:
  selector: {{k8s-app: kube-dns}}
  clusterIP: {DNS_SERVICE_IP}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_service_is_at_the_kubelets_cluster_dns_and_runs_the_local_image() {
        let m = manifest();
        assert!(m.contains(&format!("clusterIP: {DNS_SERVICE_IP}")));
        assert!(m.contains(&format!("image: {COREDNS_IMAGE}")));
        assert!(COREDNS_IMAGE.ends_with(COREDNS_VERSION));
        assert!(m.contains("kubernetes cluster.local in-addr.arpa"));
        assert!(!m.contains("forward"), "no upstream resolver here");
    }
}
