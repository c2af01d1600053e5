//! The engine: SSH transport, facts, operations, phases, concurrency.
//!
//! Every remote change goes through [`transport::Transport`]; the planning code
//! (facts → operations → commands) is pure and tested without SSH.

pub mod transport;
