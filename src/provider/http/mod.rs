//! The `http` provider protocol (`docs/provider-protocol.yaml`): how out-of-process providers
//! plug in, the way storage plugs into Kubernetes through CSI.
//!
//! - [`wire`]: the protocol's paths, bodies and error codes.
//! - [`client`]: transport (rustls on ring, CA bundle, bearer token) shared by the pieces below.
//! - [`driver`]: the `http` [`Driver`](crate::provider::Driver) the dispatcher uses.
//!
//! The protocol's own tools, `provider-sim` and `provider-conformance`, are in `crate::tools`.

pub mod client;
pub mod driver;
pub mod wire;

pub use client::{BearerToken, Endpoint, EndpointError};
pub use driver::{HttpDriver, HttpDrivers, Retry, TokenSource};
