//! From the inventory's resolved hosts to the transport's connection settings.
//!
//! The SSH layer takes plain [`SshTarget`]s so it does not depend on how inventories are written;
//! this is the one place that maps one onto the other.

use capstan_inventory::{Cluster, Host, KnownHostsPolicy as InvKnownHosts, SudoMode as InvSudo};

use crate::ssh::{KnownHostsPolicy, SshTarget, SudoMode};

/// Connection settings for one inventory host (effective settings, bastion included).
pub fn ssh_target(host: &Host) -> SshTarget {
    let ssh = &host.ssh;
    let mut target = SshTarget::new(host.name.clone(), host.address.clone());
    target.port = ssh.port;
    target.user = ssh.user.clone();
    target.identity_file = ssh.identity_file.clone();
    target.agent = ssh.agent;
    target.sudo = match ssh.sudo {
        InvSudo::Auto => SudoMode::Auto,
        InvSudo::Always => SudoMode::Always,
        InvSudo::Never => SudoMode::Never,
    };
    target.known_hosts = match ssh.known_hosts {
        InvKnownHosts::Strict => KnownHostsPolicy::Strict,
        InvKnownHosts::AcceptNew => KnownHostsPolicy::AcceptNew,
    };
    target.known_hosts_file = ssh.known_hosts_file.clone();
    target.connect_timeout = ssh.connect_timeout;
    target.keepalive = ssh.keepalive;
    target.bastion = ssh.bastion.as_ref().map(|b| {
        let mut jump = target.clone();
        jump.name = format!("{} (bastion of {})", b.address, host.name);
        jump.address = b.address.clone();
        jump.port = b.port;
        jump.user = b.user.clone();
        if b.identity_file.is_some() {
            jump.identity_file = b.identity_file.clone();
        }
        jump.bastion = None;
        Box::new(jump)
    });
    target
}

/// Every host of the cluster, in inventory order.
pub fn ssh_targets(cluster: &Cluster) -> Vec<SshTarget> {
    cluster.hosts.iter().map(ssh_target).collect()
}
