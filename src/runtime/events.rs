//! Kubernetes Events (events.k8s.io/v1), published off the reconcile path.
//!
//! A step hands its Event to a queue and goes on; a background task publishes it. Events are
//! a record for people, never an input to the protocol, so a switch must not wait for them.
//! Repeats of an Event (same workspace, type, reason, action *and note*) within `SERIES_WINDOW`
//! update the first one's `series.count` instead of creating another. kube's recorder keys on
//! everything but the note, so `kubectl describe` would show a later, different Event (the
//! reverse switch, another instance) as "(x3)" of the first one's text; here only identical
//! notes become a series. Unlike kube's recorder, the repeat table is pruned once a minute, not
//! scanned on every publish, which at 10k workspaces was the controller's largest cost. When the queue is full (the API server is far
//! behind), an Event is dropped and counted, like client-go's broadcaster does.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::api::conditions::{EventAction, EventReason};

/// Events waiting to be published before new ones are dropped: a few times client-go's 1000,
/// so that a burst of thousands of switches loses few, and bounded, because a full queue is
/// the controller's largest transient allocation (some 500 bytes a note).
const QUEUE: usize = 4096;
/// Events in flight to the API server at once.
const CONCURRENCY: usize = 8;
/// A repeat within this window becomes a series on the first Event.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// How often the repeat table is pruned.
const PRUNE_EVERY: SignedDuration = SignedDuration::from_mins(1);

const CONTROLLER: &str = "switchyard.dev/controller";

/// One Event, as a step reports it.
#[derive(Clone, Debug)]
pub struct Note {
    pub type_: EventType,
    pub reason: EventReason,
    pub action: EventAction,
    pub note: String,
    pub regarding: ObjectReference,
    /// When it happened (not when it is published).
    pub at: Timestamp,
}

/// Where steps send Events. Cheap to clone; the publisher stops when every sender is gone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Note>,
    dropped: Counter,
}

impl Events {
    /// Starts the publisher; `instance` is this controller's identity (`reportingInstance`).
    pub fn start(client: kube::Client, instance: String, dropped: Counter) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(publish_all(client, instance, rx));
        Self { tx, dropped }
    }

    /// Queues an Event; never waits.
    pub fn publish(&self, note: Note) {
        if let Err(e) = self.tx.try_send(note) {
            self.dropped.inc();
            let note = match &e {
                mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n) => n,
            };
            debug!(reason = %note.reason, "event queue full: event dropped");
        }
    }
}

/// What makes two Events repeats of each other: the object (its uid), type, reason, action and
/// the note as published (cut to `NOTE_MAX`). Kept as a 128-bit fingerprint, not the strings:
/// a burst of thousands of switches keeps an entry per workspace for `SERIES_WINDOW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key(u64, u64);

impl Key {
    fn of(note: &Note) -> Self {
        let uid = note.regarding.uid.as_deref().unwrap_or_default();
        let published = published_note(&note.note);
        let parts = (uid, type_name(note.type_), note.reason.as_str(), note.action.as_str(), published);
        let hash = |seed: u8| {
            let mut h = std::hash::DefaultHasher::new();
            (seed, parts).hash(&mut h);
            h.finish()
        };
        Key(hash(1), hash(2))
    }
}

/// The API server's limit on an Event's note, in characters.
const NOTE_MAX: usize = 1024;

/// `note` cut to what the API server keeps (on a character boundary).
fn published_note(note: &str) -> &str {
    note.char_indices().nth(NOTE_MAX).map_or(note, |(at, _)| &note[..at])
}

/// The Event a repeat would update: what its name was made of (the object's name is in the
/// note), its count and when it was last seen.
struct Seen {
    first: Timestamp,
    salt: u16,
    count: i32,
    last: Timestamp,
}

#[derive(Default)]
struct Repeats {
    seen: HashMap<Key, Seen>,
    pruned: Option<Timestamp>,
}

impl Repeats {
    /// The Event to write for `note`: a new one, or a series update of one seen recently.
    fn record(&mut self, note: &Note, instance: &str) -> (Event, bool) {
        let now = note.at;
        let key = Key::of(note);
        if self.pruned.is_none_or(|t| now.duration_since(t) > PRUNE_EVERY) {
            self.seen.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
            self.pruned = Some(now);
        }
        let mut event = new_event(note, instance);
        match self.seen.get_mut(&key) {
            Some(seen) if now.duration_since(seen.last) < SERIES_WINDOW => {
                seen.count += 1;
                seen.last = now;
                event.metadata.name = Some(event_name(object_name(note), seen.first, seen.salt));
                event.series = Some(EventSeries { count: seen.count, last_observed_time: MicroTime(now) });
                (event, true)
            }
            _ => {
                let salt = rand::random::<u16>();
                event.metadata.name = Some(event_name(object_name(note), now, salt));
                self.seen.insert(key, Seen { first: now, salt, count: 1, last: now });
                (event, false)
            }
        }
    }
}

async fn publish_all(client: kube::Client, instance: String, rx: mpsc::Receiver<Note>) {
    // reportingInstance is at most 128 characters: cut once, shared by every Event.
    let instance: Arc<str> = instance.chars().take(128).collect::<String>().into();
    let repeats = Arc::new(Mutex::new(Repeats::default()));
    let notes = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) });
    notes
        .for_each_concurrent(CONCURRENCY, |note| {
            let (client, instance, repeats) = (client.clone(), instance.clone(), repeats.clone());
            async move {
                let (event, repeat) = repeats.lock().unwrap_or_else(PoisonError::into_inner).record(&note, &instance);
                let api: Api<Event> = Api::namespaced(client, note.regarding.namespace.as_deref().unwrap_or("default"));
                let name = event.metadata.name.clone().unwrap_or_default();
                let written = if repeat {
                    let patch = serde_json::json!({"series": event.series});
                    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        // The first one expired or was deleted: write it anew.
                        Err(kube::Error::Api(s)) if s.code == 404 => api.create(&PostParams::default(), &event).await,
                        other => other,
                    }
                } else {
                    api.create(&PostParams::default(), &event).await
                };
                if let Err(error) = written {
                    warn!(%error, reason = %note.reason, "could not publish event");
                }
            }
        })
        .await;
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// The name of the object an Event is about, as its own name begins.
fn object_name(note: &Note) -> &str {
    note.regarding.name.as_deref().unwrap_or("switchyard")
}

/// The Event for `note` by `instance` (already cut to its limit), without its name
/// (`Repeats::record` names it).
fn new_event(note: &Note, instance: &str) -> Event {
    Event {
        action: Some(note.action.as_str().to_string()),
        reason: Some(note.reason.as_str().to_string()),
        note: Some(published_note(&note.note).to_owned()),
        event_time: Some(MicroTime(note.at)),
        regarding: Some(note.regarding.clone()),
        reporting_controller: Some(CONTROLLER.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        type_: Some(type_name(note.type_).to_owned()),
        metadata: ObjectMeta { namespace: note.regarding.namespace.clone(), ..Default::default() },
        ..Default::default()
    }
}

/// The longest object-name prefix of an Event name: the suffix (`.` and at most 36 hex digits)
/// must still fit the 253 characters of a DNS subdomain when the object's own name uses them all.
const NAME_PREFIX_MAX: usize = 253 - 1 - 36;

/// `<object>.<hex time><hex salt>`, cut so that it is a valid name whatever the object's is.
fn event_name(object: &str, at: Timestamp, salt: u16) -> String {
    let prefix: String = object.chars().take(NAME_PREFIX_MAX).collect();
    // A cut may end the prefix in '.' or '-', which may not precede the '.'.
    let prefix = prefix.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let prefix = if prefix.is_empty() { "switchyard" } else { prefix };
    format!("{prefix}.{:x}{salt:04x}", at.as_nanosecond().unsigned_abs())
}

/// A fresh operation id that also carries when the claim was made, to the millisecond: a
/// UUIDv7 of `at`. `status.operation.startedAt` is a `Time` and keeps whole seconds only, so a
/// duration measured from it alone (a switch's, in its Event and in
/// `switchyard_switch_duration_seconds`) runs up to a second high.
pub fn operation_id(at: Timestamp) -> String {
    let secs = u64::try_from(at.as_second()).unwrap_or(0);
    let nanos = u32::try_from(at.subsec_nanosecond()).unwrap_or(0);
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos)).to_string()
}

/// How long the operation `id` (started at `started_at`) has run at `now`, in seconds, never
/// negative. Measured from the claim time in the id when it has one that agrees with
/// `started_at` (the same second, give or take the rounding of either); otherwise (an id of
/// another form, such as a retarget's, or of an older build) from `started_at`.
pub fn seconds_since_claim(id: &str, started_at: Timestamp, now: Timestamp) -> f64 {
    let claimed = claim_time(id).filter(|t| t.duration_since(started_at).abs() < SignedDuration::from_secs(1));
    now.duration_since(claimed.unwrap_or(started_at)).as_secs_f64().max(0.0)
}

/// The time recorded in a UUIDv7 operation id.
fn claim_time(id: &str) -> Option<Timestamp> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Timestamp::new(i64::try_from(secs).ok()?, i32::try_from(nanos).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(reason: EventReason, at: Timestamp) -> Note {
        Note {
            type_: EventType::Normal,
            reason,
            action: EventAction::Provision,
            note: "n".into(),
            regarding: ObjectReference {
                namespace: Some("ns".into()),
                name: Some("ws".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            at,
        }
    }

    #[test]
    fn a_repeat_within_the_window_updates_the_first_event() {
        let mut r = Repeats::default();
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1000);
        let (first, repeat) = r.record(&note(EventReason::SwitchCompleted, t0), "me");
        assert!(!repeat);
        assert!(first.series.is_none());
        let t1 = t0 + SignedDuration::from_mins(5);
        let (second, repeat) = r.record(&note(EventReason::SwitchCompleted, t1), "me");
        assert!(repeat);
        assert_eq!(second.metadata.name, first.metadata.name);
        assert_eq!(second.series.as_ref().map(|s| s.count), Some(2));
        // Another reason is another Event.
        let (other, repeat) = r.record(&note(EventReason::TookOver, t1), "me");
        assert!(!repeat);
        assert_ne!(other.metadata.name, first.metadata.name);
    }

    #[test]
    fn a_repeat_after_the_window_is_a_new_event_and_old_entries_are_pruned() {
        let mut r = Repeats::default();
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1000);
        let (first, _) = r.record(&note(EventReason::SwitchCompleted, t0), "me");
        let late = t0 + SERIES_WINDOW + SignedDuration::from_secs(1);
        let (again, repeat) = r.record(&note(EventReason::SwitchCompleted, late), "me");
        assert!(!repeat);
        assert_ne!(again.metadata.name, first.metadata.name);
        let much_later = late + SERIES_WINDOW + PRUNE_EVERY + SignedDuration::from_secs(1);
        r.record(&note(EventReason::Provisioned, much_later), "me");
        assert_eq!(r.seen.len(), 1, "entries older than the window are pruned");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, mut rx) = mpsc::channel(2);
        let events = Events { tx, dropped: Counter::default() };
        let reasons =
            [EventReason::Provisioned, EventReason::TookOver, EventReason::Retargeted, EventReason::SwitchAborted];
        for reason in reasons {
            events.publish(note(reason, Timestamp::UNIX_EPOCH));
        }
        assert_eq!(events.dropped.get(), 2);
        let queued: Vec<EventReason> = std::iter::from_fn(|| rx.try_recv().ok()).map(|n| n.reason).collect();
        assert_eq!(queued, reasons[..2], "the first ones stay, in order");
    }

    #[test]
    fn event_names_fit_whatever_the_object_name() {
        let late = Timestamp::MAX;
        for object in ["ws".to_string(), "a".repeat(253), format!("{}-.b", "x".repeat(214)), "-".repeat(253)] {
            let name = event_name(&object, late, u16::MAX);
            assert!(name.len() <= 253, "{} characters: {name}", name.len());
            let dns = name.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
            assert!(dns, "a DNS subdomain: {name}");
        }
        assert!(event_name("ws", Timestamp::UNIX_EPOCH, 0).starts_with("ws."));
    }

    #[test]
    fn long_notes_are_cut_to_the_api_limit() {
        let mut n = note(EventReason::SwitchCompleted, Timestamp::UNIX_EPOCH);
        n.note = "x".repeat(5000);
        assert_eq!(new_event(&n, "me").note.map(|s| s.len()), Some(1024));
    }

    #[test]
    fn different_notes_are_different_events_and_identical_ones_a_series() {
        let mut r = Repeats::default();
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1000);
        let with = |text: &str, at: Timestamp| Note { note: text.into(), ..note(EventReason::SwitchCompleted, at) };
        let (first, _) = r.record(&with("from aws to gcp: i-gcp-1", t0), "me");
        let t1 = t0 + SignedDuration::from_secs(10);
        let (back, repeat) = r.record(&with("from gcp to aws: i-aws-2", t1), "me");
        assert!(!repeat, "the reverse switch is an Event of its own");
        assert_ne!(back.metadata.name, first.metadata.name);
        assert_eq!(back.note.as_deref(), Some("from gcp to aws: i-aws-2"));
        let (again, repeat) = r.record(&with("from aws to gcp: i-gcp-1", t1), "me");
        assert!(repeat, "the very same note is a repeat");
        assert_eq!(again.metadata.name, first.metadata.name);
        assert_eq!(again.series.map(|s| s.count), Some(2));
        // Notes are compared as published: cut to the API's limit.
        let long = "x".repeat(NOTE_MAX);
        r.record(&with(&format!("{long}a"), t1), "me");
        let (_, repeat) = r.record(&with(&format!("{long}b"), t1), "me");
        assert!(repeat, "notes that publish the same are the same");
    }

    #[test]
    fn a_claim_is_timed_from_its_id_to_the_millisecond() {
        let claimed = Timestamp::UNIX_EPOCH + SignedDuration::from_millis(1_000_000_700);
        let id = operation_id(claimed);
        assert_eq!(claim_time(&id), Some(claimed));
        // startedAt as the API server keeps it: whole seconds.
        let started_at = Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_000_000);
        let now = claimed + SignedDuration::from_millis(250);
        let took = seconds_since_claim(&id, started_at, now);
        assert!((took - 0.25).abs() < 1e-9, "took {took}, not 0.95 as from startedAt");
        // Another id form, or one that disagrees with startedAt: from startedAt.
        let v4 = uuid::Uuid::new_v4().to_string();
        assert!((seconds_since_claim(&v4, started_at, now) - 0.95).abs() < 1e-9);
        let elsewhen = operation_id(claimed + SignedDuration::from_secs(30));
        assert!((seconds_since_claim(&elsewhen, started_at, now) - 0.95).abs() < 1e-9);
        assert!((seconds_since_claim("not-a-uuid", started_at, now) - 0.95).abs() < 1e-9);
        // A clock that went back gives zero, not a negative duration.
        assert_eq!(seconds_since_claim(&id, started_at, claimed - SignedDuration::from_secs(5)), 0.0);
    }
}
