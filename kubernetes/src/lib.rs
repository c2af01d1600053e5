//! The Kubernetes component: kube-apiserver, kube-controller-manager and kube-scheduler as
//! systemd services on the `control_plane` hosts, kubelet and kube-proxy on every `node`, from
//! the official release tarballs; the cluster PKI and kubeconfigs; cluster DNS; version-skew-safe
//! upgrades. See docs/kubernetes.md.

pub mod addons;
pub mod backup;
pub mod client;
pub mod skew;
pub mod upgrade;
pub mod upgrade_run;
