//! One module per command group (`commands/<group>.rs` or `commands/<group>/<sub>.rs`), each
//! thin: parse arguments → call the library → print through [`crate::output::Output`].

pub mod backup;
pub mod check;
pub mod completions;
pub mod drill;
pub mod etcd;
pub mod init;
pub mod inventory;
pub mod kubeconfig;
pub mod lab;
pub mod lock;
pub mod logs;
pub mod reset;
pub mod restore;
