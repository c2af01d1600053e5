//! capstan-logging: the logging component — every host's journal shipped over mutual TLS to the
//! hosts with role `logging` (systemd-journal-upload → haproxy → systemd-journal-remote), nothing
//! lost while they are down (the sender's persistent journal is the buffer), and `capstan logs`.
//! See docs/logging.md.
//!
//! Decide purely ([`config`]: budgets, ports, every rendered file), inspect once per host
//! ([`probe`]), converge in phases of ops ([`apply`]), and read the journals back ([`logs`]).

pub mod apply;
mod component;
pub mod config;
pub mod logs;
pub mod pki;
pub mod probe;

pub use component::LoggingComponent;
