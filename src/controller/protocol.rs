//! The switch protocol (DESIGN.md §2), as effects. One reconcile runs `decide` → one step →
//! `decide` again on the object our last write returned, until the workspace is at rest or
//! must wait. Every step is idempotent, so a crash anywhere resumes from `operation.step`:
//!
//!   validate → claim → (fence, after a takeover) → stop old → commit → provision (idempotency key) → finish
//!
//! | step | decision (`decide`) | provider calls | status transition (`status`) | failpoint | Event reason |
//! |---|---|---|---|---|---|
//! | nothing | deleting, without our finalizer | – | – | – | – |
//! | add_finalizer | no operation, not deleting, no finalizer | – | finalizer added | – | – |
//! | remove_finalizer | deleting, no compute, no operation | – | finalizer removed | – | – |
//! | rest | nothing to change, or nothing can be claimed (a provider blocks it, the epoch is at its bound, the claim in status is invalid) | – | `at_rest`, only if it reads differently | – | the stall's reason (Warning), once |
//! | wait | a live claim elsewhere, or a backoff running | – | – | – | – |
//! | claim | compute differs from the spec | – | `claimed` (epoch + 1) | AfterClaim | – |
//! | take_over | another holder's claim is stale | – | `taken_over` (epoch + 1) | – | TookOver |
//! | fence | a superseded operation left providers unfenced | fence at each, unless skipped | `fenced`, or `step_failed` | – | FenceSkipped, FenceFailed |
//! | renew | waiting, the claim would soon look stale | – | `renewed` | – | – |
//! | convert_to_delete | deleting during another operation | – | `converted_to_delete` | – | – |
//! | abort | spec back on the compute's provider before the stop | lookup under the instance's key | `aborted`; if the compute is gone, `committed` or `finished_without_compute` | AfterCommit, if it commits | SwitchAborted |
//! | stop_old | compute to stop | lookup under the key (or list), stop; retried | `retrying` before each retry; then `committed` or `finished_without_compute` (a delete first releases its key's compute: lookup, stop), or `stop_failed` | AfterStop, AfterCommit | ComputeStopped (stop, delete), InstanceNotFound, StopFailed; ProviderNotFound as hold |
//! | commit | a switch with nothing to stop | – | `committed` | AfterCommit | – |
//! | provision | rolling forward, target usable | provision under the key | `provisioned`, or `step_failed` | BeforeProvision, AfterProvision | SwitchCompleted or Provisioned, ProvisionFailed; ProviderNotFound as hold |
//! | retarget | target changed after the stop | lookup, stop under the old key | `retargeted` (new operation id) | – | Retargeted |
//! | finish_without_compute | no compute wanted any more | lookup, stop under the key, if it may have created any | `finished_without_compute` | – | – |
//! | hold | our operation cannot progress | – | `step_failed` (Stalled) | – | the stall's reason (Warning), once |
//!
//! Each step is a method of [`Turn`]: the context, the workspace `decide` judged, its API and the
//! time. A step makes its provider calls, then at most one write, guarded by the resourceVersion it
//! read (`writes`); `stop_old` also renews the claim before each retry of its stop, and `abort`
//! and `stop_old` go on to commit or finish in the same step. A lost claim or a fenced provider
//! call ends the reconcile at once: no further call, no further write.
//! Every write is remembered (`Context::remember`, the workspace's `Floor`), so no later
//! reconcile acts on a cached copy older than it; after a failed step, or a write that finds
//! the workspace lost (perhaps to our own write, landed unanswered), the next reconcile reads
//! the workspace afresh, and what it reads is remembered the same way. What a step did that
//! users and operators hear of (Events, metrics, logs) it reports as an [`Outcome`];
//! `outcome::report` decides what each says. Two warnings within a stop are logged where they
//! happen: each failed attempt, and an instance id that status names but the provider does not
//! hold under its key.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{Instrument, debug, info_span, warn};

use super::decide::{AfterStop, Facts, Next, ProviderState, after_stop, decide};
use super::outcome::{Outcome, Switched, publish};
use super::status::{self, Stall};
use super::worker::Action;
use super::writes::{self, Written};
use super::{Context, Error, workspace_key};
use crate::api::conditions::{self as cond, ConditionReason, EventAction, EventReason, WaitReason};
use crate::api::{ComputeProvider, FINALIZER, Instance, OperationKind, Workspace};
use crate::provider::{CallContext, DispatchError, DriverError, InstanceState};
use crate::runtime::Backoff;
use crate::runtime::events::Note;
use crate::runtime::failpoints::FailPoint;

/// Steps one reconcile may take before yielding (a full switch takes five).
const MAX_STEPS: usize = 12;

/// What to do after a step.
enum Flow {
    /// Decide again on this (fresher) object.
    Continue(Box<Workspace>),
    /// Stop this reconcile.
    Done(Action),
}

pub async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let key = workspace_key(&ws);
    let span = info_span!("reconcile", namespace = %ws.namespace().unwrap_or_default(), name = %ws.name_any());
    async move {
        // Acting on a copy older than our own last write could repeat a step we already took
        // (a stop under a claim we released, say), and one older than a fence we met would call
        // a provider again under an epoch already superseded: read the object afresh instead.
        let mut ws = if ctx.is_behind(&ws) {
            let fresh = ctx.workspaces(&ws.namespace().unwrap_or_default()).get_opt(&ws.name_any()).await?;
            ctx.read_afresh(key.clone());
            match fresh {
                Some(fresh) if !ctx.is_behind(&fresh) => {
                    // What we read is the floor from now on, as a write's answer is: a cached
                    // copy older than it may predate a write of ours that landed unanswered,
                    // and a later trigger (a late watch event, a resync) could hand us that copy.
                    ctx.remember(&fresh);
                    fresh
                }
                // Gone, or the read is behind our write too: the watch event of our write
                // brings us back.
                _ => return Ok(Action::requeue(Duration::from_secs(1))),
            }
        } else {
            (*ws).clone()
        };
        for _ in 0..MAX_STEPS {
            let facts = facts(&ctx, &ws).await?;
            let next = decide(&ws, &facts);
            debug!(?next, "decided");
            let span = info_span!("step", step = next.name(), otel.name = tracing::field::Empty);
            crate::telemetry::otel_span(&span, next.name(), "");
            match step(&ctx, &ws, next).instrument(span).await {
                Ok(Flow::Continue(fresh)) => ws = *fresh,
                Ok(Flow::Done(action)) => {
                    ctx.memory().errors.remove(&key);
                    return Ok(action);
                }
                Err(e) => {
                    // A write of this step may have landed unanswered: read afresh next time.
                    ctx.unsure(key);
                    return Err(e);
                }
            }
        }
        Ok(Action::requeue(Duration::from_millis(100)))
    }
    .instrument(span)
    .await
}

/// Carries out one decision.
async fn step(ctx: &Context, ws: &Workspace, next: Next) -> Result<Flow, Error> {
    let api = ctx.workspaces(&ws.namespace().unwrap_or_default());
    let t = Turn { ctx, api: &api, ws, now: ctx.now() };
    match next {
        Next::Nothing => Ok(t.nothing()),
        Next::AddFinalizer => t.add_finalizer().await,
        Next::RemoveFinalizer => t.remove_finalizer().await,
        Next::Rest { stall } => t.rest(stall).await,
        Next::Wait { after, why } => Ok(wait(after, why)),
        Next::Claim { kind, from, to } => t.claim(kind, from, to).await,
        Next::TakeOver => t.take_over().await,
        Next::Fence { providers } => t.fence(&providers).await,
        Next::Renew => t.held_write(|w| status::renewed(w, &t.now)).await,
        Next::ConvertToDelete => t.held_write(|w| status::converted_to_delete(w, &t.now)).await,
        Next::Abort => t.abort().await,
        Next::StopOld { instance } => t.stop_old(instance).await,
        Next::Commit => t.commit().await,
        Next::Provision { provider, key } => t.provision(&provider, &key).await,
        Next::Retarget { provider, key } => t.retarget(&provider, &key).await,
        Next::FinishWithoutCompute { release } => t.finish_without_compute(release).await,
        Next::Hold { stall } => t.hold(stall).await,
    }
}

/// Wait without writing; the reconcile comes back after `after`.
fn wait(after: Duration, why: WaitReason) -> Flow {
    debug!(after_ms = after.as_millis() as u64, %why, "waiting");
    Flow::Done(Action::requeue(after))
}

/// What one step works with: the context, the workspace `decide` judged, the API that writes
/// it, and the time of the decision.
struct Turn<'a> {
    ctx: &'a Context,
    api: &'a Api<Workspace>,
    ws: &'a Workspace,
    now: Time,
}

impl Turn<'_> {
    /// The same step, on the copy of the workspace our last write returned, at the time now.
    fn after<'b>(&'b self, ws: &'b Workspace) -> Turn<'b> {
        Turn { ctx: self.ctx, api: self.api, ws, now: self.ctx.now() }
    }

    fn publish(&self, outcome: Outcome) {
        publish(self.ctx, self.ws, outcome);
    }

    /// Not ours to touch: forget it.
    fn nothing(&self) -> Flow {
        self.ctx.memory().forget(&workspace_key(self.ws));
        Flow::Done(Action::await_change())
    }

    /// Our finalizer first, so that no compute is created for a workspace that could vanish
    /// without us.
    async fn add_finalizer(&self) -> Result<Flow, Error> {
        let mut finalizers = self.ws.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        let fresh = writes::set_finalizers(self.api, self.ws, finalizers).await?;
        self.ctx.remember(&fresh);
        Ok(Flow::Continue(Box::new(fresh)))
    }

    /// The compute is released: let the workspace go.
    async fn remove_finalizer(&self) -> Result<Flow, Error> {
        let finalizers = self.ws.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
        writes::set_finalizers(self.api, self.ws, finalizers).await?;
        // The object goes away with its finalizer: forget it.
        self.ctx.memory().forget(&workspace_key(self.ws));
        self.publish(Outcome::FinalizerRemoved);
        Ok(Flow::Done(Action::await_change()))
    }

    /// The target changed after the old compute stopped: release what the old key created,
    /// then provision under a new operation id (hence a new key).
    async fn retarget(&self, provider: &str, key: &str) -> Result<Flow, Error> {
        if let Some(stop) = self.release(provider, key).await {
            return stop;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let flow = self.held_write(|w| status::retargeted(w, &id, &self.now)).await?;
        let (target, released) = (self.ws.spec.provider.clone(), provider.to_string());
        self.publish(Outcome::Retargeted { target, released });
        Ok(flow)
    }

    /// The spec went back to where the compute is, before our stop: release the claim. A
    /// holder we took over may have stopped that compute already, so the provider is asked
    /// first; if the compute is gone, the operation carries on as though its own stop had
    /// happened.
    async fn abort(&self) -> Result<Flow, Error> {
        let Turn { ctx, ws, .. } = *self;
        let Some((call, _)) = call_context(ctx, ws) else {
            return Ok(Flow::Done(Action::await_change()));
        };
        if let Some(instance) = ws.status.as_ref().and_then(|s| s.instance.clone())
            && let Some(provider) = lookup_provider(ctx, &instance.provider).await?
        {
            let running = match ctx.dispatcher.lookup(&provider, &call, &instance.key).await {
                // What runs under the key, whatever id status records (see `stop_named`).
                Ok(found) => found.is_some_and(|i| i.state == InstanceState::Running),
                Err(e) => return Ok(self.release_failed(&e)),
            };
            if !running {
                self.publish(Outcome::AlreadyStopped { instance });
                return self.stopped().await;
            }
        }
        let in_doubt = ws.status.as_ref().and_then(|s| s.instance.as_ref()).is_some_and(|i| i.unconfirmed);
        let op = ws.operation();
        let from = op.and_then(|o| o.from.clone()).unwrap_or_default();
        let to = op.and_then(|o| o.to.clone()).unwrap_or_default();
        let flow = self.held_write(|w| status::aborted(w, &self.now)).await?;
        self.publish(Outcome::Aborted { from, to, in_doubt });
        Ok(flow)
    }

    /// Our operation cannot progress for now: record why (Stalled), keep the claim, try again
    /// after a backoff (`retryAt`; `decide` waits it out, renewing the claim).
    async fn hold(&self, stall: Stall) -> Result<Flow, Error> {
        let changed = newly_stalled(self.ws, &stall);
        let flow = self.step_failed(stall.reason, &stall.message, 0).await?;
        if changed && matches!(flow, Flow::Continue(_)) {
            self.publish(Outcome::Held { stall });
        }
        Ok(flow)
    }

    /// A step of our operation failed: count the attempt and set the time of the next one.
    async fn step_failed(&self, reason: ConditionReason, error: &str, stall_after: i32) -> Result<Flow, Error> {
        let attempts = self.ws.operation().map(|o| o.attempts).unwrap_or_default().saturating_add(1);
        // Exact, not jittered: the time is recorded in status (`retryAt`) and judged by `decide`.
        let delay = self.ctx.settings.provision_backoff.delay(u32::try_from(attempts).unwrap_or(0));
        let retry_at = Time(self.now.0 + jiff::SignedDuration::try_from(delay).unwrap_or_default());
        self.held_write(|w| status::step_failed(w, reason, error, stall_after, &retry_at, &self.now)).await
    }

    /// Raise the fence at every provider the superseded operation could still call. One that
    /// cannot be fenced holds the operation (safe by default), unless the workspace is annotated
    /// `switchyard.dev/skip-fence` with its name: then it is skipped, with an Event and a metric.
    async fn fence(&self, providers: &[String]) -> Result<Flow, Error> {
        let Turn { ctx, ws, .. } = *self;
        let Some((call, _)) = call_context(ctx, ws) else {
            return Ok(Flow::Done(Action::await_change()));
        };
        let skip = skipped_fences(ws);
        for name in providers {
            if skip.contains(&name.as_str()) {
                let message =
                    format!("provider {name} left unfenced (annotation {SKIP_FENCE}); the inventory is the backstop");
                self.publish(Outcome::FenceSkipped { provider: name.clone(), message });
                continue;
            }
            let error = match lookup_provider(ctx, name).await? {
                None => format!("ComputeProvider {name:?} does not exist, so it cannot be fenced"),
                Some(provider) => match ctx.dispatcher.fence(&provider, &call).await {
                    Ok(()) => continue,
                    Err(e) if fenced(&e) => return Ok(self.fenced_off(&e)),
                    Err(e) => e.to_string(),
                },
            };
            let message = format!(
                "cannot fence {name}, which a superseded operation could still call: {error}; \
                 retrying (annotate the workspace {SKIP_FENCE}={name} to go on without it)"
            );
            let attempts = ws.operation().map(|o| o.attempts).unwrap_or_default().saturating_add(1);
            let stall_after = ctx.settings.stall_after;
            let flow = self.step_failed(ConditionReason::FenceFailed, &message, stall_after).await?;
            let notify = told(attempts, stall_after);
            self.publish(Outcome::FenceFailed { provider: name.clone(), error, message, notify });
            return Ok(flow);
        }
        self.publish(Outcome::Fenced { providers: providers.to_vec() });
        self.held_write(|w| status::fenced(w, &self.now)).await
    }

    /// At rest: write the status only if what it says would change.
    async fn rest(&self, stall: Option<Stall>) -> Result<Flow, Error> {
        let Turn { ctx, ws, .. } = *self;
        let next = status::at_rest(ws, stall.as_ref(), &self.now);
        // At rest, the resync sweep (`super::resync`) looks again now and then.
        let action =
            if stall.is_some() { Action::requeue(ctx.settings.provision_backoff.cap) } else { Action::await_change() };
        let unwritten = crate::api::WorkspaceStatus::default();
        if status::differs(ws.status.as_ref().unwrap_or(&unwritten), &next) {
            match writes::patch_status(self.api, ws, &next).await {
                Ok(fresh) => {
                    ctx.remember(&fresh);
                    // A stall is told once, when the Stalled condition comes to say it.
                    let told = stall.filter(|stall| newly_stalled(ws, stall));
                    self.publish(Outcome::Rested { stall: told });
                }
                // Someone wrote first; their event brings us back with the fresh object.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Flow::Done(action))
    }

    /// The claim: a guarded write of a fresh operation. Losing it ends everything for us.
    async fn claim(&self, kind: OperationKind, from: Option<String>, to: Option<String>) -> Result<Flow, Error> {
        let Turn { ctx, ws, .. } = *self;
        // The id carries the claim time to the millisecond (startedAt keeps whole seconds).
        let id = crate::runtime::events::operation_id(self.now.0);
        let next = status::claimed(ws, &id, kind, from.clone(), to.clone(), &ctx.settings.identity, &self.now);
        let is_ours = |w: &Workspace| w.operation().is_some_and(|o| o.id == id);
        match writes::claim(self.api, ws, &next, is_ours).await? {
            Written::Lost => Ok(self.lost(Outcome::ClaimLost { kind })),
            Written::Landed(fresh) => {
                ctx.remember(&fresh);
                let epoch = fresh.status.as_ref().map(|s| s.epoch).unwrap_or_default();
                self.publish(Outcome::Claimed { id, kind, from, to, epoch });
                ctx.failpoints.hit(FailPoint::AfterClaim).await;
                Ok(Flow::Continue(fresh))
            }
        }
    }

    /// Takeover of a stale claim: same operation, our identity, a new epoch.
    async fn take_over(&self) -> Result<Flow, Error> {
        let Turn { ctx, ws, .. } = *self;
        let me = ctx.settings.identity.clone();
        let previous = ws.operation().map(|o| o.holder.clone()).unwrap_or_default();
        let next = status::taken_over(ws, &me, &self.now);
        let epoch = next.epoch;
        let is_ours = |w: &Workspace| {
            w.status.as_ref().is_some_and(|s| s.epoch == epoch && s.operation.as_ref().is_some_and(|o| o.holder == me))
        };
        match writes::claim(self.api, ws, &next, is_ours).await? {
            Written::Lost => Ok(self.lost(Outcome::TakeOverLost)),
            Written::Landed(fresh) => {
                ctx.remember(&fresh);
                publish(ctx, &fresh, Outcome::TookOver { previous, epoch });
                Ok(Flow::Continue(fresh))
            }
        }
    }

    /// Stop the old compute, with bounded retries; then what `after_stop` says (commit a
    /// switch, finish a stop or delete).
    async fn stop_old(&self, instance: Instance) -> Result<Flow, Error> {
        let Some((call, kind)) = call_context(self.ctx, self.ws) else {
            return Ok(Flow::Done(Action::await_change()));
        };
        let Some(provider) = lookup_provider(self.ctx, &instance.provider).await? else {
            let stall = Stall::new(
                ConditionReason::ProviderNotFound,
                format!("ComputeProvider {:?} holding the old compute does not exist", instance.provider),
            );
            return self.hold(stall).await;
        };
        let ws = match self.stop_with_retries(&provider, &call, &instance).await? {
            Stopped::Yes(after) => after,
            Stopped::No(after, error) => return self.after(&after).stop_failed(&error).await,
            Stopped::Ended(flow) => return Ok(flow),
        };
        // What follows describes the workspace and the time after the stop.
        let t = self.after(&ws);
        t.ctx.memory().stop_failures.remove(&workspace_key(&ws));
        t.publish(Outcome::Stopped { instance, kind });
        t.ctx.failpoints.hit(FailPoint::AfterStop).await;
        t.stopped().await
    }

    /// The old compute is gone (our stop, or one the provider reports): on to what `after_stop`
    /// says, committing a switch or finishing a stop or delete.
    async fn stopped(&self) -> Result<Flow, Error> {
        match after_stop(self.ws) {
            AfterStop::Commit => self.commit().await,
            AfterStop::Finish { release } => self.finish_without_compute(release).await,
        }
    }

    /// The stop of `instance`, retried with backoff up to the policy's attempts. Slow failing
    /// calls could outlast the claim lease, so the claim is renewed before each retry.
    async fn stop_with_retries(
        &self,
        provider: &ComputeProvider,
        call: &CallContext,
        instance: &Instance,
    ) -> Result<Stopped, Error> {
        let (attempts, backoff) = stop_policy(self.ctx, provider);
        let mut current = self.ws.clone();
        for attempt in 1..=attempts {
            let e = match self.stop_named(provider, call, instance).await {
                Ok(()) => return Ok(Stopped::Yes(current)),
                Err(e) if fenced(&e) => return Ok(Stopped::Ended(self.fenced_off(&e))),
                Err(e) => e,
            };
            warn!(attempt, attempts, error = %e, "stop failed");
            let error = e.to_string();
            if !e.is_retryable() || attempt == attempts {
                return Ok(Stopped::No(current, error));
            }
            tokio::time::sleep(backoff.delay(attempt)).await;
            let t = self.after(&current);
            match t.held_write(|w| status::retrying(w, &error, &t.now)).await? {
                Flow::Continue(fresh) => current = *fresh,
                done @ Flow::Done(_) => return Ok(Stopped::Ended(done)),
            }
        }
        // Only a policy of zero attempts (below the schema's minimum of one) gets here: it
        // calls nothing and carries on.
        Ok(Stopped::Yes(current))
    }

    /// Stops the compute `instance` names, as the provider knows it: the instance created under
    /// its key. A recorded id alone is not trusted (whoever can write status can write any id):
    /// stopping a forged id would stop a phantom, or another workspace's compute, while ours
    /// runs on. So the key is looked up first and the instance found is stopped. A key the
    /// provider does not know (forged too, or the instance lost) is no proof that nothing of
    /// ours runs there: the provider's inventory is searched for this workspace's running
    /// compute, and that is stopped.
    async fn stop_named(
        &self,
        provider: &ComputeProvider,
        call: &CallContext,
        instance: &Instance,
    ) -> Result<(), DispatchError> {
        let dispatcher = &self.ctx.dispatcher;
        match dispatcher.lookup(provider, call, &instance.key).await? {
            Some(found) if found.state == InstanceState::Running => {
                if found.id != instance.id {
                    warn!(recorded = %instance.id, found = %found.id, key = %instance.key, "status named another instance id than the provider holds under its key: stopping the one it holds");
                }
                dispatcher.stop(provider, call, &found.id).await
            }
            Some(_) => Ok(()),
            None => {
                let listed =
                    super::inventory::list_all(self.ctx, provider).await.map_err(|e| DispatchError::Driver {
                        provider: provider.name_any(),
                        source: DriverError::Transient(format!("listing instances: {e}")),
                    })?;
                let ours: Vec<String> = listed
                    .into_iter()
                    .filter(|i| i.workspace_uid == call.workspace_uid && i.state == InstanceState::Running)
                    .map(|i| i.id)
                    .collect();
                for id in &ours {
                    dispatcher.stop(provider, call, id).await?;
                }
                self.publish(Outcome::InstanceNotFound { instance: instance.clone(), stopped: ours });
                Ok(())
            }
        }
    }

    /// End the operation with no compute, releasing first what its key may have created on its
    /// target (`in_flight`: provider and key).
    async fn finish_without_compute(&self, in_flight: Option<(String, String)>) -> Result<Flow, Error> {
        if let Some((provider, key)) = in_flight
            && let Some(stop) = self.release(&provider, &key).await
        {
            return stop;
        }
        self.held_write(|w| status::finished_without_compute(w, &self.now)).await
    }

    /// The commit: only now, with the old compute confirmed stopped, is the new provider
    /// recorded.
    async fn commit(&self) -> Result<Flow, Error> {
        let flow = self.held_write(|w| status::committed(w, &self.now)).await?;
        self.ctx.failpoints.hit(FailPoint::AfterCommit).await;
        Ok(flow)
    }

    /// A stop failed past its budget: release the claim, stay on the old provider, retry later.
    async fn stop_failed(&self, error: &str) -> Result<Flow, Error> {
        let Turn { ctx, ws, .. } = *self;
        let key = workspace_key(ws);
        let delay = {
            let mut memory = ctx.memory();
            let failures = memory.stop_failures.get(&key).map(|(n, _)| n + 1).unwrap_or(1);
            let delay = ctx.settings.stop_retry.jittered(failures);
            let at = self.now.0 + jiff::SignedDuration::try_from(delay).unwrap_or_default();
            memory.stop_failures.insert(key, (failures, at));
            delay
        };
        let switch = ws
            .operation()
            .filter(|o| o.kind == OperationKind::Switch)
            .map(|o| (o.from.clone().unwrap_or_default(), o.to.clone().unwrap_or_default()));
        let flow = self.held_write(|w| status::stop_failed(w, error, &self.now)).await?;
        let error = error.to_string();
        self.publish(Outcome::StopFailed { switch, error, retry_in_secs: delay.as_secs() });
        Ok(match flow {
            Flow::Continue(_) => Flow::Done(Action::requeue(delay)),
            done => done,
        })
    }

    /// Provision on the target under the operation's key; then finish.
    async fn provision(&self, provider_name: &str, key: &str) -> Result<Flow, Error> {
        let Turn { ctx, ws, .. } = *self;
        let Some((call, kind)) = call_context(ctx, ws) else {
            return Ok(Flow::Done(Action::await_change()));
        };
        let Some(provider) = lookup_provider(ctx, provider_name).await? else {
            let message = format!("ComputeProvider {provider_name:?} does not exist");
            return self.hold(Stall::new(ConditionReason::ProviderNotFound, message)).await;
        };
        ctx.failpoints.hit(FailPoint::BeforeProvision).await;
        let result = ctx.dispatcher.provision(&provider, &call, key, ws.spec.template.as_ref()).await;
        let instance = match result {
            Ok(info) if info.state == InstanceState::Running => info,
            Ok(info) => {
                let error = format!("instance {} under key {key} is {:?}", info.id, info.state);
                return self.provision_failed(&error).await;
            }
            Err(e) if fenced(&e) => return Ok(self.fenced_off(&e)),
            Err(e) => return self.provision_failed(&e.to_string()).await,
        };
        ctx.failpoints.hit(FailPoint::AfterProvision).await;
        let instance = Instance {
            id: instance.id,
            provider: provider_name.to_string(),
            key: key.to_string(),
            location: Some(provider.spec.location()),
            unconfirmed: false,
        };
        let flow = self.held_write(|w| status::provisioned(w, instance.clone(), &self.now)).await?;
        if let Flow::Continue(_) = &flow {
            let switched = (kind == OperationKind::Switch).then(|| {
                let op = ws.operation();
                // Timed at the finish, not at this reconcile's start: the provision call counts too.
                let finished = ctx.now();
                Switched {
                    from: op.and_then(|o| o.from.clone()).unwrap_or_default(),
                    took: op.map(|o| crate::runtime::events::seconds_since_claim(&o.id, o.started_at.0, finished.0)),
                }
            });
            self.publish(Outcome::Provisioned { instance, switched });
        }
        Ok(flow)
    }

    /// A provision failed: record it in the operation (roll forward only) and retry after a
    /// backoff.
    async fn provision_failed(&self, error: &str) -> Result<Flow, Error> {
        let stall_after = self.ctx.settings.stall_after;
        let flow = self.step_failed(ConditionReason::ProvisionFailed, error, stall_after).await?;
        // Told on the first attempt and when the workspace stalls, if the failure was recorded.
        let attempts = match &flow {
            Flow::Continue(fresh) => fresh.operation().map(|o| o.attempts).unwrap_or(1),
            Flow::Done(_) => 0,
        };
        let notify = matches!(flow, Flow::Continue(_)) && told(attempts, stall_after);
        self.publish(Outcome::ProvisionFailed { error: error.to_string(), attempts, notify });
        Ok(flow)
    }

    /// Stops whatever `key` created on `provider`. Returns a flow only when the reconcile must
    /// end.
    async fn release(&self, provider_name: &str, key: &str) -> Option<Result<Flow, Error>> {
        let ctx = self.ctx;
        let (call, _) = call_context(ctx, self.ws)?;
        let provider = match lookup_provider(ctx, provider_name).await {
            Ok(Some(p)) => p,
            // A provider that no longer exists holds nothing we could release.
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let found = match ctx.dispatcher.lookup(&provider, &call, key).await {
            Ok(found) => found,
            Err(e) => return Some(Ok(self.release_failed(&e))),
        };
        if let Some(instance) = found.filter(|i| i.state == InstanceState::Running) {
            if let Err(e) = ctx.dispatcher.stop(&provider, &call, &instance.id).await {
                return Some(Ok(self.release_failed(&e)));
            }
            self.publish(Outcome::Released { instance: instance.id, provider: provider_name.to_string() });
        }
        None
    }

    fn release_failed(&self, e: &DispatchError) -> Flow {
        if fenced(e) {
            return self.fenced_off(e);
        }
        self.publish(Outcome::ReleaseFailed { error: e.to_string() });
        Flow::Done(Action::requeue(self.ctx.settings.provision_backoff.base))
    }

    /// A write under our claim. Lost means someone took the workspace over: stop here.
    async fn held_write(&self, transition: impl Fn(&Workspace) -> crate::api::WorkspaceStatus) -> Result<Flow, Error> {
        let Some(op_id) = self.ws.operation().map(|o| o.id.clone()) else {
            return Ok(Flow::Done(Action::await_change()));
        };
        match writes::under_claim(self.api, self.ws, transition).await? {
            Written::Landed(fresh) => {
                self.ctx.remember(&fresh);
                self.publish(Outcome::Written);
                Ok(Flow::Continue(fresh))
            }
            Written::Lost => Ok(self.lost(Outcome::OperationLost { operation: op_id })),
        }
    }

    /// A write showed the workspace held by another, or finished (by our own write, landed
    /// unanswered): touch nothing more, and read it afresh next time (`Floor::unsure`).
    fn lost(&self, outcome: Outcome) -> Flow {
        self.ctx.unsure(workspace_key(self.ws));
        self.publish(outcome);
        Flow::Done(Action::await_change())
    }

    /// A provider refused us for a stale epoch: another instance has taken over. Touch nothing
    /// more, and act on no copy of the workspace older than that epoch (see `Floor`):
    /// our cache may not have seen the takeover yet, and a trigger already queued would
    /// otherwise call again.
    fn fenced_off(&self, e: &DispatchError) -> Flow {
        if let DispatchError::Driver { source: DriverError::StaleEpoch { newest, .. }, .. } = e {
            self.ctx.fenced_at(workspace_key(self.ws), *newest);
        }
        self.publish(Outcome::FencedOff { error: e.to_string() });
        Flow::Done(Action::await_change())
    }
}

/// The annotation that lets an operation go on without fencing the providers it lists.
pub const SKIP_FENCE: &str = "switchyard.dev/skip-fence";

fn skipped_fences(ws: &Workspace) -> Vec<&str> {
    ws.annotations().get(SKIP_FENCE).map(|v| v.split(',').map(str::trim).collect()).unwrap_or_default()
}

/// Whether `stall` is news: the Stalled condition of `ws` does not say it yet.
fn newly_stalled(ws: &Workspace, stall: &Stall) -> bool {
    let conditions = ws.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    cond::get(conditions, cond::STALLED).is_none_or(|c| c.status != "True" || c.reason != stall.reason)
}

/// Whether a failed attempt of a step is told (an Event): the first, and the one that stalls.
fn told(attempts: i32, stall_after: i32) -> bool {
    attempts == 1 || attempts == stall_after
}

/// How a stop with retries ended, with the workspace as our last write left it.
enum Stopped {
    Yes(Workspace),
    /// Failed past its budget (or for good), with the last error.
    No(Workspace, String),
    /// The reconcile must end (fenced off, or the claim lost while renewing it).
    Ended(Flow),
}

fn fenced(e: &DispatchError) -> bool {
    matches!(e, DispatchError::Driver { source: DriverError::StaleEpoch { .. }, .. })
}

/// The call context of our current operation.
fn call_context(ctx: &Context, ws: &Workspace) -> Option<(CallContext, OperationKind)> {
    let op = ws.status.as_ref()?.operation.as_ref()?;
    Some((
        CallContext {
            namespace: ws.namespace().unwrap_or_default(),
            name: ws.name_any(),
            workspace_uid: ws.metadata.uid.clone()?,
            epoch: op.epoch,
            caller: ctx.settings.identity.clone(),
            operation_id: op.id.clone(),
            cluster: ctx.settings.cluster.clone(),
        },
        op.kind,
    ))
}

/// Attempts of a stop within one claim, and the backoff between them (doubling, no cap: the
/// attempts are few).
fn stop_policy(ctx: &Context, provider: &ComputeProvider) -> (u32, Backoff) {
    let (attempts, base) = match &provider.spec.stop_policy {
        Some(p) => (p.max_attempts, Duration::from_millis(p.initial_backoff_ms)),
        None => (ctx.settings.stop_attempts, ctx.settings.stop_backoff),
    };
    (attempts, Backoff::new(base, Duration::MAX))
}

/// A provider by name: from the cache, confirmed by a read when the cache has not seen it
/// (right after start-up, or just after it was created).
async fn lookup_provider(ctx: &Context, name: &str) -> Result<Option<Arc<ComputeProvider>>, Error> {
    if let Some(p) = ctx.providers.get(&ObjectRef::new(name)) {
        return Ok(Some(p));
    }
    let api: Api<ComputeProvider> = Api::all(ctx.client.clone());
    Ok(api.get_opt(name).await?.map(Arc::new))
}

async fn provider_state(ctx: &Context, name: &str) -> Result<ProviderState, Error> {
    Ok(match lookup_provider(ctx, name).await? {
        Some(p) => readiness(&p),
        None => ProviderState::Missing,
    })
}

/// What the provider's Ready condition says about calling it.
fn readiness(p: &ComputeProvider) -> ProviderState {
    let conditions = p.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    match cond::get(conditions, cond::READY) {
        Some(c) if c.status == "False" => {
            let reason = if c.reason == ConditionReason::ProviderMisconfigured {
                ConditionReason::ProviderMisconfigured
            } else {
                ConditionReason::ProviderNotReady
            };
            ProviderState::NotReady { reason, message: c.message.clone() }
        }
        _ => ProviderState::Usable,
    }
}

/// The state of the provider holding `instance`, for a stop there.
async fn source_state(ctx: &Context, instance: Option<&Instance>) -> Result<ProviderState, Error> {
    let Some(instance) = instance else { return Ok(ProviderState::Usable) };
    let Some(provider) = lookup_provider(ctx, &instance.provider).await? else {
        return Ok(ProviderState::Missing);
    };
    let now = provider.spec.location();
    if let Some(then) = instance.location.as_deref().filter(|then| *then != now) {
        let message = format!(
            "ComputeProvider {:?} changed under the compute it holds: {} was created at {then:?}, the provider now \
             points at {now:?}; nothing is sent there. Restore the provider's settings, or, if that compute is \
             gone, clear status.instance (README: Operations)",
            instance.provider, instance.id
        );
        return Ok(ProviderState::Moved { message });
    }
    // A provider being deleted takes no new work, but the compute it holds can still be
    // stopped there: that is what has to happen before it goes.
    if provider.metadata.deletion_timestamp.is_some() {
        return Ok(ProviderState::Usable);
    }
    Ok(readiness(&provider))
}

async fn facts(ctx: &Context, ws: &Workspace) -> Result<Facts, Error> {
    let source = source_state(ctx, ws.status.as_ref().and_then(|s| s.instance.as_ref())).await?;
    let retry_at = ctx.memory().stop_failures.get(&workspace_key(ws)).map(|(_, at)| *at);
    Ok(Facts {
        me: ctx.settings.identity.clone(),
        now: ctx.now().0,
        claim_lease: ctx.settings.claim_lease,
        target: provider_state(ctx, &ws.spec.provider).await?,
        source,
        retry_at,
        provision_backoff: ctx.settings.provision_backoff,
        leader: ctx.leading,
    })
}

/// The API server refused a write because `ws` is too large to store. The controller cannot
/// shrink it (it never writes spec or others' metadata), so it says so: a Warning Event (an
/// object of its own, so it lands), and on the first failure a best-effort Stalled condition,
/// which lands only if the object has room left for it. No provider is called meanwhile: every
/// step that would call one starts with a write that cannot land.
pub(super) fn report_too_large(ctx: Arc<Context>, ws: Arc<Workspace>, answer: &str, failures: u32) {
    let message = format!(
        "the workspace is too large for the API server to store another write ({answer}); nothing is done \
         until it shrinks: remove finalizers, annotations or labels that are not needed"
    );
    let (namespace, name) = (ws.namespace().unwrap_or_default(), ws.name_any());
    publish(&ctx, &ws, Outcome::TooLarge { namespace, name, message: message.clone() });
    if failures > 1 {
        return;
    }
    tokio::spawn(async move {
        let stall = Stall::new(ConditionReason::ObjectTooLarge, message);
        let next = status::at_rest(&ws, Some(&stall), &ctx.now());
        let api = ctx.workspaces(&ws.namespace().unwrap_or_default());
        if let Err(error) = writes::patch_status(&api, &ws, &next).await {
            debug!(%error, "the Stalled condition did not fit either");
        }
    });
}

/// Queues an Event about `ws` (published in the background; see `events`).
pub(super) fn event(
    ctx: &Context,
    ws: &Workspace,
    type_: EventType,
    reason: EventReason,
    action: EventAction,
    note: &str,
) {
    ctx.events.publish(Note {
        type_,
        reason,
        action,
        note: note.into(),
        regarding: writes::reference(ws),
        at: Timestamp::now(),
    });
}
