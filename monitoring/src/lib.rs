//! capstan-monitoring: the monitoring component — node_exporter on every host and Prometheus on
//! the hosts with role `monitoring` (each one a full replica, differing only in the `replica`
//! external label), scraping every component's targets ([`config::scrape_targets`]). See
//! docs/monitoring.md. Alertmanager runs clustered on the same hosts; both servers change one replica
//! at a time ([`rollout`]).
//!
//! Decide purely ([`config`]), resolve the artifacts ([`release`]), then converge in phases of
//! ops ([`apply`]). It also owns the node_exporter textfile collector directory, where backup and
//! drill schedules leave their metrics.

pub mod apply;
mod component;
pub mod config;
pub mod credentials;
pub mod release;
mod reset;
pub mod rollout;
pub mod status;

pub use component::MonitoringComponent;

/// node_exporter's `--collector.textfile.directory` on every host (Debian's prometheus-node-exporter
/// default). Components write `<name>.prom` files here, atomically (temp file + rename).
pub const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";

/// The path of a metrics file in [`TEXTFILE_DIR`], as a `&'static str` usable in constants:
/// `textfile_path!("capstan_backup.prom")`.
#[macro_export]
macro_rules! textfile_path {
    ($name:literal) => {
        concat!("/var/lib/prometheus/node-exporter/", $name)
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn textfile_paths_are_in_the_textfile_dir() {
        assert_eq!(textfile_path!("x.prom"), format!("{}/x.prom", super::TEXTFILE_DIR));
    }
}
