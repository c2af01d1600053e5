//! What Kubernetes contributes to backups and restores through the component model
//! ([`capstan_provisioner::component::Component::state_files`] and
//! [`capstan_provisioner::component::Component::restore_stopped_units`]): everything a restore
//! needs besides etcd's data, and the units that must not run while etcd is restored.
//!
//! The state: the cluster and front-proxy CA key pairs, the service-account key pair (tokens
//! issued before the disaster stay valid) and the encryption configuration (without its key the
//! restored Secrets are unreadable). The etcd CA is in etcd's own part of the backup.
//!
//! The API servers, controller-managers and schedulers stop before etcd is restored (an API
//! server must never see etcd's revision go back) and start once the state is back; kubelets keep
//! running and reconnect.

use capstan_inventory::Cluster;
use capstan_provisioner::component::{RoleUnit, StateFile};

const CONTROL_PLANE: &str = "control_plane";

/// The files, each restored on every control-plane host: keys and the encryption configuration
/// root-only (0600), certificates and the public key 0644.
pub const STATE_FILES: [(&str, u32); 7] = [
    ("/etc/kubernetes/pki/ca.crt", 0o644),
    ("/etc/kubernetes/pki/ca.key", 0o600),
    ("/etc/kubernetes/pki/front-proxy-ca.crt", 0o644),
    ("/etc/kubernetes/pki/front-proxy-ca.key", 0o600),
    ("/etc/kubernetes/pki/sa.key", 0o600),
    ("/etc/kubernetes/pki/sa.pub", 0o644),
    ("/etc/kubernetes/encryption-config.yaml", 0o600),
];

/// The control plane's units, stopped during etcd's restore.
pub const RESTORE_STOPPED_UNITS: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"];

pub fn state_files(_cluster: &Cluster) -> Vec<StateFile> {
    STATE_FILES
        .iter()
        .map(|(path, mode)| StateFile {
            role: CONTROL_PLANE,
            path: path.to_string(),
            mode: *mode,
            optional: false,
        })
        .collect()
}

pub fn restore_stopped_units() -> Vec<RoleUnit> {
    RESTORE_STOPPED_UNITS
        .iter()
        .map(|unit| RoleUnit {
            role: CONTROL_PLANE,
            unit,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_root_only_and_every_file_is_on_the_control_plane() {
        for (path, mode) in STATE_FILES {
            let secret = path.ends_with(".key") || path.ends_with("encryption-config.yaml");
            assert_eq!(mode, if secret { 0o600 } else { 0o644 }, "{path}");
        }
        assert!(restore_stopped_units().iter().all(|u| u.role == CONTROL_PLANE));
        assert!(!RESTORE_STOPPED_UNITS.contains(&"kubelet"), "kubelets keep running");
    }
}
