//! Where the control plane's files live on the hosts: one list, shared by the PKI, the units,
//! the probes and the backups (which need the CA key pairs, the service-account key pair and the
//! encryption configuration: [`BACKUP_FILES`]).
//!
//! Keys and kubeconfigs (which embed keys) are root-only (0600); certificates are 0644.

pub use capstan_endpoint::kube_pki::{APISERVER_CERT, APISERVER_KEY, CA_CERT, CA_KEY, PKI_DIR};

/// Where the binaries from the release tarballs are installed.
pub const BIN_DIR: &str = "/usr/local/bin";
/// Kubeconfigs, the encryption configuration and the audit policy.
pub const CONFIG_DIR: &str = "/etc/kubernetes";

/// The front-proxy CA (aggregated API servers trust requests it signed).
pub const FRONT_PROXY_CA_CERT: &str = "/etc/kubernetes/pki/front-proxy-ca.crt";
pub const FRONT_PROXY_CA_KEY: &str = "/etc/kubernetes/pki/front-proxy-ca.key";
/// The service-account token signing key pair (ECDSA P-256).
pub const SA_KEY: &str = "/etc/kubernetes/pki/sa.key";
pub const SA_PUB: &str = "/etc/kubernetes/pki/sa.pub";
/// The API server's client certificate towards kubelets.
pub const APISERVER_KUBELET_CLIENT_CERT: &str = "/etc/kubernetes/pki/apiserver-kubelet-client.crt";
pub const APISERVER_KUBELET_CLIENT_KEY: &str = "/etc/kubernetes/pki/apiserver-kubelet-client.key";
/// The API server's client certificate towards aggregated API servers (front-proxy CA).
pub const FRONT_PROXY_CLIENT_CERT: &str = "/etc/kubernetes/pki/front-proxy-client.crt";
pub const FRONT_PROXY_CLIENT_KEY: &str = "/etc/kubernetes/pki/front-proxy-client.key";
/// The API server's etcd client certificate (signed by the etcd CA) and the etcd CA certificate.
pub const ETCD_CA_CERT: &str = "/etc/kubernetes/pki/etcd-ca.crt";
pub const APISERVER_ETCD_CLIENT_CERT: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
pub const APISERVER_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";
/// Serving certificates (signed by the cluster CA, so Prometheus and the API server verify them)
/// of the controller-manager and scheduler on control-plane hosts and of kubelet on nodes.
pub const CONTROLLER_MANAGER_SERVING_CERT: &str = "/etc/kubernetes/pki/controller-manager-serving.crt";
pub const CONTROLLER_MANAGER_SERVING_KEY: &str = "/etc/kubernetes/pki/controller-manager-serving.key";
pub const SCHEDULER_SERVING_CERT: &str = "/etc/kubernetes/pki/scheduler-serving.crt";
pub const SCHEDULER_SERVING_KEY: &str = "/etc/kubernetes/pki/scheduler-serving.key";
pub const KUBELET_SERVING_CERT: &str = "/etc/kubernetes/pki/kubelet-serving.crt";
pub const KUBELET_SERVING_KEY: &str = "/etc/kubernetes/pki/kubelet-serving.key";

/// Secrets encryption at rest (EncryptionConfiguration; holds the key: 0600).
pub const ENCRYPTION_CONFIG: &str = "/etc/kubernetes/encryption-config.yaml";
/// The API server's audit policy and log (when the inventory turns the audit log on).
pub const AUDIT_POLICY: &str = "/etc/kubernetes/audit-policy.yaml";
pub const AUDIT_LOG: &str = "/var/log/kubernetes/audit.log";

/// Kubeconfigs (client certificate and key embedded; 0600).
pub const CONTROLLER_MANAGER_KUBECONFIG: &str = "/etc/kubernetes/controller-manager.conf";
pub const SCHEDULER_KUBECONFIG: &str = "/etc/kubernetes/scheduler.conf";
pub const KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
pub const KUBE_PROXY_KUBECONFIG: &str = "/etc/kubernetes/kube-proxy.conf";
/// The RBAC-bound admin (group [`crate::pki::ADMIN_GROUP`]), on control-plane hosts.
pub const ADMIN_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";
/// Break-glass `system:masters` credentials, only on control-plane hosts, never handed out by
/// `capstan kubeconfig`.
pub const SUPER_ADMIN_KUBECONFIG: &str = "/etc/kubernetes/super-admin.conf";

/// Component configuration files.
pub const SCHEDULER_CONFIG: &str = "/etc/kubernetes/kube-scheduler.yaml";
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
pub const KUBE_PROXY_CONFIG: &str = "/var/lib/kube-proxy/config.yaml";
pub const KUBE_PROXY_DIR: &str = "/var/lib/kube-proxy";

/// systemd units.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// What a backup must carry for a restore of Kubernetes besides etcd's data: the cluster and
/// front-proxy CA key pairs, the service-account key pair and the encryption configuration (the
/// etcd CA is etcd's own backup's). Restoring them before the API servers start keeps every
/// issued credential and every encrypted secret readable.
pub const BACKUP_FILES: [&str; 7] = [
    CA_CERT,
    CA_KEY,
    FRONT_PROXY_CA_CERT,
    FRONT_PROXY_CA_KEY,
    SA_KEY,
    SA_PUB,
    ENCRYPTION_CONFIG,
];
