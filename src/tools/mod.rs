//! The tools that ship in the same binary as the controller: `provider-sim` (the simulated
//! cloud served over the http provider protocol), `provider-conformance` (the protocol's suite
//! for any provider), `bench` and `dev`. They use the controller and the drivers; nothing in
//! those uses them.

pub mod bench;
pub mod conformance;
pub mod dev;
pub mod process;
pub mod provider_sim;

pub use conformance::ConformanceArgs;
