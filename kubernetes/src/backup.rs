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
use capstan_provisioner::component::{CheckResult, RoleUnit, StateFile};

use crate::paths::{BACKUP_FILES, ENCRYPTION_CONFIG};

const CONTROL_PLANE: &str = "control_plane";

/// The files ([`crate::paths::BACKUP_FILES`]), each restored on every control-plane host with its
/// mode: keys and the encryption configuration root-only (0600), certificates and the public key
/// 0644.
pub fn state_file_modes() -> Vec<(&'static str, u32)> {
    BACKUP_FILES
        .iter()
        .map(|path| {
            let secret = path.ends_with(".key") || *path == ENCRYPTION_CONFIG;
            (*path, if secret { 0o600 } else { 0o644 })
        })
        .collect()
}

/// The control plane's units, stopped during etcd's restore.
pub const RESTORE_STOPPED_UNITS: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"];

pub fn state_files(_cluster: &Cluster) -> Vec<StateFile> {
    state_file_modes()
        .into_iter()
        .map(|(path, mode)| StateFile {
            role: CONTROL_PLANE,
            path: path.to_string(),
            mode,
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

/// A drill's checks of the restored cluster's API ([`crate::client::drill_checks`]), with a fresh
/// admin credential from the restored CA. The control plane must be running on the drill's target
/// (`capstan apply` after the restore); when it is not, the checks fail saying so.
pub async fn drill_checks(cluster: &Cluster) -> Vec<CheckResult> {
    let failed = |detail: String| {
        vec![CheckResult {
            name: crate::drill::DRILL_CHECKS[0].into(),
            ok: false,
            detail,
        }]
    };
    let kubeconfig = match crate::kubeconfig::admin_kubeconfig(cluster).await {
        Ok(kubeconfig) => kubeconfig,
        Err(e) => return failed(format!("no admin credential: {e}")),
    };
    match crate::client::KubeClient::from_kubeconfig(&kubeconfig).await {
        Ok(client) => crate::client::drill_checks(&client).await,
        Err(e) => failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_root_only_and_every_file_is_on_the_control_plane() {
        let modes = state_file_modes();
        assert_eq!(modes.len(), 7);
        for (path, mode) in modes {
            let secret = path.ends_with(".key") || path.ends_with("encryption-config.yaml");
            assert_eq!(mode, if secret { 0o600 } else { 0o644 }, "{path}");
        }
        assert!(state_file_modes().contains(&("/etc/kubernetes/pki/sa.key", 0o600)));
        assert!(restore_stopped_units().iter().all(|u| u.role == CONTROL_PLANE));
        assert!(!RESTORE_STOPPED_UNITS.contains(&"kubelet"), "kubelets keep running");
    }
}
