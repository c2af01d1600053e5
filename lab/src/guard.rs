//! Test support: a lab that is torn down when it goes out of scope.

use crate::error::Result;
use crate::lab::{self, Lab};
use crate::UpOptions;

/// Brings a lab up and calls [`lab::down`] on drop, also when a test panics.
///
/// ```no_run
/// let guard = capstan_lab::LabGuard::up(capstan_lab::UpOptions::new("mytest", 2))?;
/// let inventory = &guard.lab().inventory_path;
/// # Ok::<(), capstan_lab::LabError>(())
/// ```
#[derive(Debug)]
pub struct LabGuard {
    lab: Lab,
    paths: crate::Paths,
}

impl LabGuard {
    /// Brings the lab up; if that fails, whatever was created is removed before returning.
    pub fn up(opts: UpOptions) -> Result<LabGuard> {
        let name = opts.name.clone();
        let paths = opts.paths.clone();
        match lab::up(opts) {
            Ok(lab) => Ok(LabGuard { lab, paths }),
            Err(e) => {
                if !matches!(e, crate::LabError::AlreadyExists(_)) {
                    let _ = lab::down_in(&paths, &name);
                }
                Err(e)
            }
        }
    }

    /// The lab as it was when it came up (use [`lab::get`] for live state).
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn name(&self) -> &str {
        &self.lab.name
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down_in(&self.paths, &self.lab.name) {
            eprintln!("lab {}: cleanup failed: {e}", self.lab.name);
        }
    }
}
