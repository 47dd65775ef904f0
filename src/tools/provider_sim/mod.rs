//! `switchyard provider-sim`: the simulated cloud served over the http provider protocol
//! (`docs/provider-protocol.yaml`), with durable state, fault injection and a ledger endpoint —
//! the stand-in cloud of the end-to-end tests and of `dev`.
//!
//! - [`server`] and [`journal`]: the service and its durable state.
//! - [`process`]: starts and drives provider-sim processes for end-to-end tests.

pub mod journal;
pub mod process;
pub mod server;

pub use process::{ProviderSimOptions, ProviderSimProcess, SimProcessError, SimTls};
pub use server::{ProviderSim, SimArgs};
