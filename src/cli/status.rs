//! `switchyard status [NAME]`: every workspace as a table, or one in detail (conditions with
//! reasons and messages, the operation in flight, the last switch, the instance).

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::connect::{Cluster, ClusterArgs};
use super::exit::{CliError, STATUS_EXIT_CODES, is_not_found};
use crate::api::conditions as cond;
use crate::api::{Workspace, WorkspaceStatus};

/// The LAST ERROR / REASON column is cut to this many characters (the detail view has it all).
const NOTE_WIDTH: usize = 80;

/// Options of `switchyard status`.
#[derive(clap::Args, Debug)]
#[command(after_help = STATUS_EXIT_CODES)]
pub struct StatusArgs {
    /// Show this workspace in detail (default: a table of all workspaces in the namespace).
    pub name: Option<String>,
    /// List the workspaces of all namespaces.
    #[arg(short = 'A', long, conflicts_with_all = ["name", "namespace"])]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub async fn run(args: StatusArgs) -> Result<(), CliError> {
    let Cluster { client, namespace } = args.cluster.connect().await?;
    let now = Timestamp::now();
    if let Some(name) = &args.name {
        let api: Api<Workspace> = Api::namespaced(client, &namespace);
        let reading = format!("reading workspace {namespace}/{name}");
        let ws = api.get_opt(name).await.map_err(|e| CliError::api(reading, e))?;
        let ws = ws.ok_or_else(|| CliError::NotFound { namespace: namespace.clone(), name: name.clone() })?;
        print!("{}", detail(&ws, now));
        return Ok(());
    }
    let (api, scope): (Api<Workspace>, String) = if args.all_namespaces {
        (Api::all(client), "any namespace".to_string())
    } else {
        (Api::namespaced(client, &namespace), format!("namespace {namespace}"))
    };
    let mut list = api.list(&ListParams::default()).await.map_err(|e| {
        let doing = if is_not_found(&e) {
            "listing workspaces (are the switchyard.dev CRDs installed?)".to_string()
        } else {
            format!("listing workspaces in {scope}")
        };
        CliError::api(doing, e)
    })?;
    if list.items.is_empty() {
        eprintln!("No workspaces found in {scope}.");
        return Ok(());
    }
    list.items.sort_by_key(|ws| (ws.namespace(), ws.name_any()));
    print!("{}", table(&list.items, args.all_namespaces));
    Ok(())
}

/// The table: NAME, PROVIDER, ACTIVE, PHASE, READY, STEP, LAST ERROR / REASON (NAMESPACE first with -A).
pub fn table(workspaces: &[Workspace], with_namespace: bool) -> String {
    let mut rows = vec![
        ["NAMESPACE", "NAME", "PROVIDER", "ACTIVE", "PHASE", "READY", "STEP", "LAST ERROR / REASON"].map(String::from),
    ];
    for ws in workspaces {
        let s = ws.status.clone().unwrap_or_default();
        let step = s.operation.as_ref().map(|op| format!("{:?}/{:?}", op.kind, op.step));
        rows.push([
            ws.namespace().unwrap_or_default(),
            ws.name_any(),
            ws.spec.provider.clone(),
            dash(s.active_provider.clone()),
            dash(s.phase.map(|p| format!("{p:?}"))),
            dash(cond::get(&s.conditions, cond::READY).map(|c| c.status.clone())),
            dash(step),
            cut(&note(&s), NOTE_WIDTH),
        ]);
    }
    if !with_namespace {
        for row in &mut rows {
            row[0].clear(); // an empty first column: align drops it
        }
    }
    align(&rows, "", "   ")
}

/// Rows as lines of left-aligned columns, each line prefixed with `indent`; a column empty in
/// every row is left out.
pub(crate) fn align<const N: usize>(rows: &[[String; N]], indent: &str, gap: &str) -> String {
    let widths = (0..N).map(|col| rows.iter().map(|r| r[col].chars().count()).max().unwrap_or(0));
    let widths: Vec<usize> = widths.collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).filter(|(_, w)| **w > 0).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(&format!("{indent}{}\n", cells.join(gap).trim_end()));
    }
    out
}

/// The LAST ERROR / REASON cell: why it is stalled, else the operation's last error, else
/// the Ready reason.
fn note(s: &WorkspaceStatus) -> String {
    if let Some(stalled) = cond::get(&s.conditions, cond::STALLED).filter(|c| c.status == "True") {
        return format!("{}: {}", stalled.reason, stalled.message);
    }
    if let Some(op) = &s.operation
        && let Some(e) = &op.last_error
    {
        return format!("attempt {}: {e}", op.attempts);
    }
    cond::get(&s.conditions, cond::READY).map(|c| c.reason.clone()).unwrap_or_default()
}

/// One workspace in full.
pub fn detail(ws: &Workspace, now: Timestamp) -> String {
    let s = ws.status.clone().unwrap_or_default();
    let mut out = Lines::default();
    out.field("Name", ws.name_any());
    out.field("Namespace", ws.namespace().unwrap_or_default());
    out.field("Provider", format!("{} (spec)", ws.spec.provider));
    out.field("Active", dash(s.active_provider.clone()));
    out.field("Running", format!("{} (spec)", ws.spec.running));
    out.field("Phase", dash(s.phase.map(|p| format!("{p:?}"))));
    let generation = ws.metadata.generation.map_or("-".to_string(), |g| g.to_string());
    let observed = s.observed_generation.map_or("-".to_string(), |g| g.to_string());
    out.field("Generation", format!("{generation} (observed {observed})"));
    out.field("Epoch", s.epoch.to_string());
    out.field(
        "Instance",
        match &s.instance {
            Some(i) => format!("{} on {} (key {})", i.id, i.provider, i.key),
            None => "none".to_string(),
        },
    );
    match &s.operation {
        None => out.field("Operation", "none".to_string()),
        Some(op) => {
            let route = match (op.from.as_deref(), op.to.as_deref()) {
                (Some(from), Some(to)) => format!(" from {from} to {to}"),
                (None, Some(to)) => format!(" to {to}"),
                (Some(from), None) => format!(" from {from}"),
                (None, None) => String::new(),
            };
            out.field("Operation", format!("{:?}{route}", op.kind));
            out.sub("Step", format!("{:?}", op.step));
            out.sub("Holder", format!("{} (epoch {})", op.holder, op.epoch));
            out.sub("Started", when(&op.started_at, now));
            out.sub("Renewed", when(&op.renewed_at, now));
            out.sub("Id", op.id.clone());
            if op.attempts > 0 || op.last_error.is_some() {
                out.sub("Attempts", op.attempts.to_string());
                out.sub("Last error", dash(op.last_error.clone()));
            }
        }
    }
    match &s.last_switch {
        None => out.field("Last switch", "none".to_string()),
        Some(last) => {
            let took = last.completed_at.0.duration_since(last.started_at.0);
            out.field("Last switch", format!("{} to {}, took {}", last.from, last.to, span(took)));
            out.sub("Completed", when(&last.completed_at, now));
        }
    }
    out.field("Conditions", String::new());
    let mut rows = vec![["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"].map(String::from)];
    for c in &s.conditions {
        let since = span(now.duration_since(c.last_transition_time.0));
        rows.push([c.type_.clone(), c.status.clone(), c.reason.clone(), since, c.message.clone()]);
    }
    out.0.push_str(&align(&rows, "  ", "  "));
    out.0
}

/// `Label:` lines with aligned values; `sub` lines are indented under the previous field.
#[derive(Default)]
struct Lines(String);

impl Lines {
    fn field(&mut self, label: &str, value: String) {
        self.0.push_str(format!("{:<14}{value}", format!("{label}:")).trim_end());
        self.0.push('\n');
    }

    fn sub(&mut self, label: &str, value: String) {
        self.0.push_str(&format!("  {:<12}{value}\n", format!("{label}:")));
    }
}

fn dash(value: Option<String>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or_else(|| "-".to_string())
}

/// `text` cut to `width` characters, an ellipsis marking the cut.
pub(crate) fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// A timestamp and how long ago it was.
fn when(t: &Time, now: Timestamp) -> String {
    format!("{:.0} ({} ago)", t.0, span(now.duration_since(t.0)))
}

/// `850ms`, `42s`, `3m12s`, `5h4m`, `2d3h`, like kubectl's ages.
fn span(d: SignedDuration) -> String {
    let ms = d.as_millis().max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..120 => format!("{s}s"),
        120..7200 => format!("{}m{}s", s / 60, s % 60),
        7200..172_800 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Instance, OperationKind};
    use crate::controller::status::{self, Stall};

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn ws(name: &str, provider: &str) -> Workspace {
        Workspace::builder(name, provider).namespace("dev").generation(1).build()
    }

    fn running(name: &str, provider: &str) -> Workspace {
        let mut w = ws(name, provider);
        let instance = Instance::new(format!("i-{name}"), provider, "k");
        w.status = Some(status::provisioned(&w, instance, &at(0)));
        w
    }

    fn switching_with_error(name: &str) -> Workspace {
        let mut w = running(name, "aws");
        w.spec.provider = "gcp".into();
        let from = Some("aws".to_string());
        w.status = Some(status::claimed(&w, "op-1", OperationKind::Switch, from, Some("gcp".into()), "ctl-1", &at(5)));
        w.status = Some(status::committed(&w, &at(6)));
        w.status =
            Some(status::step_failed(&w, cond::ConditionReason::ProvisionFailed, "quota exceeded", 5, &at(7), &at(7)));
        w
    }

    #[test]
    fn the_table_has_a_row_per_workspace_with_step_and_error() {
        let mut stalled = running("ws-3", "aws");
        stalled.spec.provider = "nope".into();
        let stall = Stall::new(cond::ConditionReason::ProviderNotFound, "ComputeProvider \"nope\" does not exist");
        stalled.status = Some(status::at_rest(&stalled, Some(&stall), &at(9)));
        let text = table(&[running("ws-1", "aws"), switching_with_error("ws-2"), stalled], false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(words(0), ["NAME", "PROVIDER", "ACTIVE", "PHASE", "READY", "STEP", "LAST", "ERROR", "/", "REASON"]);
        assert_eq!(words(1), ["ws-1", "aws", "aws", "Running", "True", "-", "Running"]);
        assert_eq!(
            words(2),
            ["ws-2", "gcp", "gcp", "Switching", "False", "Switch/OldStopped", "attempt", "1:", "quota", "exceeded"]
        );
        assert!(
            lines[3].contains("Failed") && lines[3].contains("ProviderNotFound: ComputeProvider \"nope\""),
            "{text}"
        );
        // Columns line up: every cell starts where its header does.
        for header in ["PROVIDER", "ACTIVE", "PHASE", "READY", "STEP", "LAST"] {
            let at = lines[0].find(header).unwrap_or_default();
            for line in &lines[1..] {
                let starts = line.as_bytes().get(at - 1) == Some(&b' ') && line.as_bytes().get(at) != Some(&b' ');
                assert!(starts, "{header} misaligned in:\n{text}");
            }
        }
    }

    #[test]
    fn all_namespaces_adds_the_namespace_column() {
        let text = table(&[running("ws-1", "aws")], true);
        assert!(text.starts_with("NAMESPACE   NAME"), "{text}");
        assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("dev         ws-1")), "{text}");
    }

    #[test]
    fn long_notes_are_cut_in_the_table() {
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }

    #[test]
    fn the_detail_shows_operation_conditions_and_instance() {
        let text = detail(&switching_with_error("ws-2"), at(20).0);
        for expected in [
            "Name:         ws-2",
            "Provider:     gcp (spec)",
            "Active:       gcp",
            "Phase:        Switching",
            "Instance:     none",
            "Operation:    Switch from aws to gcp",
            "  Step:       OldStopped",
            "  Holder:     ctl-1 (epoch 1)",
            "  Started:    2027-01-15T08:00:05Z (15s ago)",
            "  Attempts:   1",
            "  Last error: quota exceeded",
            "Last switch:  none",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let ready = text.lines().find(|l| l.trim_start().starts_with("Ready")).unwrap_or_default();
        assert_eq!(ready.split_whitespace().take(3).collect::<Vec<_>>(), ["Ready", "False", "Switching"], "{text}");
    }

    #[test]
    fn the_detail_shows_the_last_switch() {
        let mut w = switching_with_error("ws-2");
        let instance =
            Instance { id: "i-9".into(), provider: "gcp".into(), key: "k2".into(), location: None, unconfirmed: false };
        w.status = Some(status::provisioned(&w, instance, &at(12)));
        let text = detail(&w, at(20).0);
        assert!(text.contains("Instance:     i-9 on gcp (key k2)"), "{text}");
        assert!(text.contains("Last switch:  aws to gcp, took 7s"), "{text}");
        assert!(text.contains("Operation:    none"), "{text}");
    }

    #[test]
    fn spans_read_like_kubectl_ages() {
        assert_eq!(span(SignedDuration::from_millis(850)), "850ms");
        assert_eq!(span(SignedDuration::from_secs(42)), "42s");
        assert_eq!(span(SignedDuration::from_secs(192)), "3m12s");
        assert_eq!(span(SignedDuration::from_secs(3 * 86_400 + 7200)), "3d2h");
        assert_eq!(span(SignedDuration::from_secs(-5)), "0ms");
    }
}
