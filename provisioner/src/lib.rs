//! The engine: SSH transport, facts, operations, phases, concurrency.
//!
//! Every remote change goes through [`transport::Transport`]; the planning code
//! (facts → operations → commands) is pure and tested without SSH.

pub mod transport;
pub mod known_hosts;
pub mod ssh;
pub mod etcd;
pub mod pki;
pub mod artifact;
pub mod local;
pub mod ops;
pub mod phases;
pub mod report;
pub mod runner;
pub mod upload;
pub mod pool;
pub mod facts;
pub mod check;
