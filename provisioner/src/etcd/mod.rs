//! etcd-specific building blocks: the per-member configuration model and its rendering, an mTLS
//! client for membership changes, health and status, the member probe, and the `apply`, `status`
//! and `credentials` flows built from them, with version changes decided in `upgrade`.
//!
//! Certificates come from [`crate::pki`]; file locations on members are [`config::PkiPaths`].

pub mod apply;
pub mod client;
pub mod config;
pub mod inspect;
pub mod probe;
pub mod restore;
pub mod status;
pub mod upgrade;
