//! The etcd component: the per-member configuration model and its rendering, an mTLS client for
//! membership changes, health and status, the member probe, and the `apply`, `status`,
//! `credentials` and `restore` flows built from them, with version changes decided in `upgrade`.
//!
//! Built on the engine (`capstan_provisioner`): certificates come from its generic PKI, named and
//! given etcd's client identities in [`pki`]; file locations on members are [`config::PkiPaths`];
//! the release tarball is etcd's row of the engine's release table ([`release`]). What the engine
//! needs to know about etcd (roles, ports) it learns through [`EtcdComponent`].

pub mod apply;
pub mod client;
mod component;
pub mod config;
pub mod inspect;
pub mod lock;
pub mod pki;
pub mod probe;
pub mod release;
pub mod reset;
pub mod restore;
pub mod status;
pub mod upgrade;

pub use component::EtcdComponent;
