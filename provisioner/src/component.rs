//! What a component (a service capstan installs and runs on cluster hosts) tells the engine.
//!
//! The engine never names a component: each one lives in its own crate and implements
//! [`Component`], and the binary hands the engine the list of all of them. Whatever the engine
//! needs to know per component comes through this trait, so adding a component changes no engine
//! code.
//!
//! Today a component declares the inventory roles it runs on and the TCP ports those roles need
//! (checked by the preflight [`crate::check`]). The trait is deliberately minimal and is meant to
//! grow as the engine takes over more of the work: its phases (apply and plan), metrics scrape
//! targets, log units, and its part of a cluster plan are to be added here.

use crate::check::RequiredPort;

/// A component as the engine sees it. Implementations are stateless descriptions; `Send + Sync`
/// so a list of them can be a `static` and be shared across tasks.
pub trait Component: Send + Sync {
    /// The component's name, e.g. its row in the release table ([`crate::releases`]).
    fn name(&self) -> &'static str;

    /// The inventory roles (e.g. `node`) whose hosts run this component.
    fn roles(&self) -> &'static [&'static str];

    /// The TCP ports the component needs, each tagged with the role ([`RequiredPort::role`], one
    /// of [`Component::roles`]) whose hosts need it. Preflight checks them on every host with that
    /// role: free, or already held by [`RequiredPort::owner`].
    fn required_ports(&self) -> Vec<RequiredPort>;
}
