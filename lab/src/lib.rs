//! The local lab: real Debian 12 machines under systemd-nspawn.
