//! capstan-backup: streaming, age-encrypted etcd backups to S3 or a local directory.
//!
//! A backup is a directory of objects under the store's prefix, `<id>/`: the etcd snapshot, the
//! cluster PKI (a tar) and the inventory, each age-encrypted, then `manifest.json` written last.
//! A backup without its manifest is incomplete: never offered for restore, removed by prune.
//!
//! Layers: pure parts ([`id`], [`manifest`], [`retention`], [`trailer`]) are unit-tested; IO
//! lives at the edges: [`store`] (file:// and s3://), [`snapshot`] (etcd's maintenance stream)
//! and [`ops`] (create, list, verify, prune), which wire them through [`pipeline`].

pub mod access;
mod component;
pub mod error;
pub mod id;
pub mod manifest;
pub mod ops;
pub mod pipeline;
pub mod retention;
pub mod snapshot;
pub mod state;
pub mod state_push;
pub mod store;
pub mod trailer;

pub use component::ScheduleComponent;
pub use error::BackupError;
pub use id::BackupId;
pub use manifest::{Manifest, ObjectDigest, ObjectEntry};
pub use ops::{
    create, list, parse_recipients_file, prune, read_manifest, verify, BackupSummary, CreateRequest, Encryption,
    ObjectCheck, Progress, ProgressFn, PruneEntry, PruneOptions, PruneReport, VerifyProblem, VerifyReport,
    VerifyTarget,
};
pub use retention::{Decision, Retention, DEFAULT_INCOMPLETE_GRACE};
pub use snapshot::EtcdSource;
pub use store::{open_store, S3Options, Store, StoreError, StoreUrl};

/// The version of capstan that wrote a backup, recorded in its manifest.
pub const CAPSTAN_VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod drill_report;
pub mod metrics;
pub mod restore;
pub mod schedule;
pub mod schedule_install;
