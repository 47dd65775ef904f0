//! The `http` provider protocol (`docs/provider-protocol.yaml`): how out-of-process providers
//! plug in, the way storage plugs into Kubernetes through CSI.
//!
//! - [`wire`]: the protocol's paths, bodies and error codes.
//! - [`client`]: transport (rustls on ring, CA bundle, bearer token) shared by the pieces below.
//! - [`driver`]: the `http` [`Driver`](crate::provider::Driver) the dispatcher uses.
//! - [`server`] and [`journal`]: `switchyard provider-sim`, the simulated cloud served over the
//!   protocol with durable state.
//! - [`conformance`]: `switchyard provider-conformance`, the suite any provider runs against itself.
//! - [`process`]: starts and drives provider-sim processes for end-to-end tests.

pub mod client;
pub mod conformance;
pub mod driver;
pub mod journal;
pub mod process;
pub mod server;
pub mod wire;

pub use client::{BearerToken, Endpoint, EndpointError};
pub use conformance::ConformanceArgs;
pub use driver::{HttpDriver, HttpDrivers, Retry, TokenSource};
pub use process::{ProviderSimOptions, ProviderSimProcess, SimProcessError, SimTls};
pub use server::{ProviderSim, SimArgs};
