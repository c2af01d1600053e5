//! The nodes component: the container runtime (containerd with runc, or the lab-only crun
//! without cgroups) and the pod network (CNI bridge + host-local IPAM, routes between nodes,
//! masquerading) on every host with role `node` or `control_plane`.
//!
//! Inspect ([`probe`]), decide purely ([`config`]: the runtime per host from its facts, swap;
//! [`podcidr`]: stable pod subnets), persist the subnets in capstan's record in etcd
//! ([`records`]), then converge in phases of ops ([`apply`]). The artifacts are this component's
//! rows of the engine's release table ([`release`]). `capstan status` reads the record back
//! ([`status`]).

pub mod apply;
mod component;
pub mod config;
pub mod podcidr;
pub mod probe;
pub mod records;
pub mod release;
pub mod reset;
pub mod status;

pub use component::NodesComponent;
