//! etcd-specific building blocks: the per-member configuration model and its rendering, and an
//! mTLS client for membership changes, health and status.
//!
//! Certificates come from [`crate::pki`]; file locations on members are [`config::PkiPaths`].

pub mod client;
pub mod config;
