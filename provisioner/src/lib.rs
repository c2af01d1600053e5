//! The engine: SSH transport, facts, operations, phases, concurrency, artifact resolution,
//! generic PKI and preflight checks.
//!
//! Every remote change goes through [`transport::Transport`]; the planning code
//! (facts → operations → commands) is pure and tested without SSH. The engine never names a
//! component: components live in their own crates and reach it through [`component::Component`].

pub mod artifact;
pub mod check;
pub mod cluster_plan;
pub mod component;
pub mod facts;
pub mod hint;
pub mod known_hosts;
pub mod local;
pub mod lock;
pub mod ops;
pub mod phases;
pub mod pki;
pub mod plan_view;
pub mod pool;
pub mod releases;
pub mod report;
pub mod reset;
pub mod runner;
pub mod ssh;
pub mod targets;
pub mod transport;
pub mod upload;
