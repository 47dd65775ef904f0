//! Leader election on a `coordination.k8s.io/v1` Lease, so one replica reconciles in normal
//! operation. Correctness never depends on it (claims and fencing do); it only keeps two
//! replicas from racing all day, and lets a new leader take over a dead leader's claims at once.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the Lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// A leader that has not renewed for this long is replaced.
    pub duration: Duration,
}

/// What this instance knows about leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    Unknown,
    /// We lead.
    Leader,
    /// Someone else leads (their identity).
    Follower(String),
}

/// Runs the election until the process ends, publishing every change on `tx`. Renews every
/// third of the lease; a leader that cannot renew within the lease steps down.
pub async fn elect(client: Client, lease: LeaseSettings, identity: String, tx: watch::Sender<Leadership>) {
    let api: Api<Lease> = Api::namespaced(client, &lease.namespace);
    let period = lease.duration / 3;
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let state = match try_acquire_or_renew(&api, &lease, &identity).await {
            Ok(state) => {
                if state == Leadership::Leader {
                    last_renewed = Some(tokio::time::Instant::now());
                }
                state
            }
            Err(e) => {
                warn!(error = %e, lease = %lease.name, "leader election: lease update failed");
                // Keep leading only while the lease we last renewed is still ours.
                match last_renewed {
                    Some(at) if at.elapsed() < lease.duration && *tx.borrow() == Leadership::Leader => {
                        Leadership::Leader
                    }
                    _ => Leadership::Unknown,
                }
            }
        };
        if *tx.borrow() != state {
            info!(?state, lease = %lease.name, "leadership changed");
            tx.send_replace(state);
        }
        tokio::time::sleep(period).await;
    }
}

async fn try_acquire_or_renew(api: &Api<Lease>, lease: &LeaseSettings, me: &str) -> kube::Result<Leadership> {
    let now = Timestamp::now();
    let seconds = i32::try_from(lease.duration.as_secs()).unwrap_or(i32::MAX).max(1);
    let Some(mut current) = api.get_opt(&lease.name).await? else {
        let fresh = Lease {
            metadata: ObjectMeta { name: Some(lease.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.to_string()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &fresh).await {
            Ok(_) => Ok(Leadership::Leader),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Unknown),
            Err(e) => Err(e),
        };
    };
    let spec = current.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(d)) => renewed.0 + jiff::SignedDuration::from_secs(i64::from(d)) < now,
        _ => true,
    };
    if holder != me && !holder.is_empty() && !expired {
        return Ok(Leadership::Follower(holder));
    }
    if holder != me {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(me.to_string());
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    // A replace carries our resourceVersion: of two candidates, one gets 409.
    match api.replace(&current.name_any(), &PostParams::default(), &current).await {
        Ok(_) => Ok(Leadership::Leader),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Unknown),
        Err(e) => Err(e),
    }
}
