//! Switchyard: a Kubernetes controller that places each Workspace on a compute provider and
//! switches it, safely, when `spec.provider` changes.

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod computeprovider;
pub mod controller;
pub mod provider;
pub mod runtime;
pub mod telemetry;
pub mod tools;
