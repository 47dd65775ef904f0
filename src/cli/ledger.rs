//! `switchyard provider-sim ledger`: the calls a provider-sim has ledgered, as a table for people
//! or as JSON (one entry a line) for tools. The `/v1/admin/ledger` endpoint stays the machine
//! interface; this reads it.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;

use super::status::{align, cut};
use crate::provider::http::{BearerToken, Endpoint};
use crate::provider::simulated::{LedgerEntry, Outcome};

/// Options of `switchyard provider-sim ledger`.
#[derive(clap::Args, Debug, Clone)]
pub struct LedgerArgs {
    /// The provider-sim's base URL, as it printed it (`listening http://127.0.0.1:PORT`).
    #[arg(long)]
    pub endpoint: String,
    /// File holding its bearer token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// PEM CA bundle, for a provider-sim serving https with its own certificate.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Only the newest N calls.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Print each entry as one JSON line (times in RFC 3339) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("GET {url}: {reason}")]
    Call { url: String, reason: String },
}

/// How long the one call may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Width of the OUTCOME column: rejection and fault messages come from the provider.
const OUTCOME_WIDTH: usize = 60;

pub async fn run(args: &LedgerArgs) -> Result<(), LedgerError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| LedgerError::Read { path: path.clone(), source })
    };
    let token = BearerToken::new(read(&args.token_file)?.trim());
    let ca = args.ca_file.as_ref().map(read).transpose()?;
    let endpoint = Endpoint::new(&args.endpoint, ca.as_deref(), TIMEOUT)
        .map_err(|e| LedgerError::Endpoint { endpoint: args.endpoint.clone(), reason: e.to_string() })?;
    let url = endpoint.url(&["admin", "ledger"]).to_string();
    let fail = |reason: String| LedgerError::Call { url: url.clone(), reason };
    let response = endpoint
        .request(Method::GET, &["admin", "ledger"], Some(&token))
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| fail(e.without_url().to_string()))?;
    if !status.is_success() {
        return Err(fail(format!("{status}: {}", cut(&text, 200))));
    }
    let entries: Vec<LedgerEntry> =
        serde_json::from_str(&text).map_err(|e| fail(format!("not a ledger ({e}): {}", cut(&text, 200))))?;
    let skip = args.tail.map_or(0, |n| entries.len().saturating_sub(n));
    let entries = &entries[skip..];
    if args.json {
        for entry in entries {
            let line = serde_json::to_string(entry).map_err(|e| fail(e.to_string()))?;
            println!("{line}");
        }
    } else {
        print!("{}", table(entries));
    }
    Ok(())
}

/// SEQ, AT (UTC, to the millisecond), PROVIDER, CALL, WORKSPACE, EPOCH, INSTANCE, OUTCOME, CALLER.
pub fn table(entries: &[LedgerEntry]) -> String {
    let mut rows = vec![
        ["SEQ", "AT", "PROVIDER", "CALL", "WORKSPACE", "EPOCH", "INSTANCE", "OUTCOME", "CALLER"].map(String::from),
    ];
    for e in entries {
        let at = jiff::Timestamp::try_from(e.at)
            .ok()
            .and_then(|t| t.round(jiff::Unit::Millisecond).ok())
            .map_or_else(|| "?".to_string(), |t| format!("{t:.3}"));
        rows.push([
            e.seq.to_string(),
            at,
            e.provider.clone(),
            e.call.to_string(),
            format!("{}/{}", e.namespace, e.name),
            e.epoch.to_string(),
            e.instance.clone().unwrap_or_else(|| "-".to_string()),
            cut(&outcome(&e.outcome), OUTCOME_WIDTH),
            e.caller.clone(),
        ]);
    }
    align(&rows, "", "  ")
}

/// An outcome in words.
fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Created => "created".into(),
        Outcome::Existing => "existing (same key)".into(),
        Outcome::Stopped => "stopped".into(),
        Outcome::AlreadyStopped => "already stopped".into(),
        Outcome::Found => "found".into(),
        Outcome::NotFound => "not found".into(),
        Outcome::Fenced { newest } => format!("fenced (newest epoch {newest})"),
        Outcome::Failed(why) => format!("failed: {why}"),
        Outcome::FailedAfterFence(why) => format!("failed after the fence: {why}"),
        Outcome::FenceRaised => "fence raised".into(),
        Outcome::Rejected(why) => format!("rejected: {why}"),
        Outcome::CommittedResponseLost { created } => {
            format!("{}, answer lost", if *created { "created" } else { "existing" })
        }
        Outcome::Hung => "hung (no answer)".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::provider::simulated::Call;

    fn entry(seq: u64, outcome: Outcome) -> LedgerEntry {
        LedgerEntry {
            seq,
            at: UNIX_EPOCH + Duration::new(1_796_000_000, 123_456_789),
            provider: "aws".into(),
            caller: "switchyard-1".into(),
            operation_id: "op".into(),
            cluster: String::new(),
            call: Call::Provision,
            workspace_uid: "u".into(),
            namespace: "default".into(),
            name: "ws-1".into(),
            epoch: 3,
            key: Some("u.op".into()),
            instance: Some("i-aws-1".into()),
            outcome,
        }
    }

    #[test]
    fn the_table_has_a_row_per_call_with_rfc3339_times() {
        let text = table(&[entry(1, Outcome::Created), entry(2, Outcome::Fenced { newest: 4 })]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("SEQ  AT"), "{text}");
        assert!(lines[1].contains("2026-11-30T00:53:20.123Z") && lines[1].contains("default/ws-1"), "{text}");
        assert!(lines[1].contains("provision") && lines[1].contains("i-aws-1") && lines[1].contains("created"));
        assert!(lines[2].contains("fenced (newest epoch 4)"), "{text}");
    }

    #[test]
    fn long_outcomes_are_cut() {
        let text = table(&[entry(1, Outcome::Rejected("x".repeat(500)))]);
        assert!(text.lines().nth(1).is_some_and(|l| l.chars().count() < 250), "{text}");
    }
}
