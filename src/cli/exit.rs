//! Exit codes of the user-facing commands (`switch`, `status`), the error that carries one,
//! and the text `--help` shows for them.

use std::process::ExitCode;
use std::time::Duration;

/// Done, or nothing to do.
pub const DONE: u8 = 0;
/// The workspace is Stalled, was deleted, or was switched elsewhere while we waited.
pub const FAILED: u8 = 1;
/// A usage error (clap exits with 2 too), or the workspace does not exist.
pub const USAGE_OR_NOT_FOUND: u8 = 2;
/// `--timeout` passed before the switch finished.
pub const TIMED_OUT: u8 = 3;
/// No usable kubeconfig, or the API server refused or failed a request.
pub const CLUSTER: u8 = 4;
/// Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// The exit codes of `switch`, as its `--help` lists them.
pub const SWITCH_EXIT_CODES: &str = "\
Exit codes:
  0    done, or nothing to do (the workspace is already on PROVIDER)
  1    failed: the workspace is Stalled (reason and message are printed), was deleted,
       or was switched to another provider while waiting
  2    usage error, or the workspace does not exist
  3    timed out (--timeout) before the switch finished; it goes on in the cluster
  4    no usable kubeconfig, or the API server refused or failed a request
  130  interrupted (Ctrl-C); the switch goes on in the cluster";

/// The exit codes of `status`, as its `--help` lists them.
pub const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0    shown (whatever state the workspaces are in)
  2    usage error, or the workspace does not exist
  4    no usable kubeconfig, or the API server refused or failed a request";

/// Why a user-facing command did not succeed. Each variant maps to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no usable kubeconfig or in-cluster config: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("{doing}: {source}")]
    Api {
        doing: String,
        #[source]
        source: kube::Error,
    },
    #[error("{doing}: {source}")]
    Watch {
        doing: String,
        #[source]
        source: kube::runtime::watcher::Error,
    },
    #[error("{doing}: {source}")]
    Io {
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("workspace {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
    #[error("workspace {name} is stalled ({reason}): {message}\n{hint}")]
    Stalled { name: String, reason: String, message: String, hint: String },
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {} waiting for {waiting_for}; last seen: {last_seen}\n{hint}", seconds(*.after))]
    TimedOut { after: Duration, waiting_for: String, last_seen: String, hint: String },
    #[error("interrupted; {0}")]
    Interrupted(String),
}

impl CliError {
    /// An API error while `doing` something; a 404 on workspace `name` means it does not exist.
    pub fn api(doing: impl Into<String>, source: kube::Error) -> Self {
        Self::Api { doing: doing.into(), source }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Stalled { .. } | Self::Failed(_) | Self::Io { .. } => FAILED,
            Self::NotFound { .. } => USAGE_OR_NOT_FOUND,
            Self::TimedOut { .. } => TIMED_OUT,
            Self::Infer(_) | Self::Kubeconfig(_) | Self::Api { .. } | Self::Watch { .. } => CLUSTER,
            Self::Interrupted(_) => INTERRUPTED,
        }
    }
}

/// True when `e` is the API server's 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// Prints the error (if any) to stderr and turns the result into the process exit code.
pub fn exit(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(DONE),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `1.5s`, `300s`: how long something took, for people.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 { format!("{s:.1}s") } else { format!("{s:.0}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_is_documented_once() {
        let documented =
            |help: &str, code: u8| help.lines().filter(|l| l.trim_start().starts_with(&format!("{code} "))).count();
        for code in [DONE, FAILED, USAGE_OR_NOT_FOUND, TIMED_OUT, CLUSTER, INTERRUPTED] {
            assert_eq!(documented(SWITCH_EXIT_CODES, code), 1, "exit code {code} in:\n{SWITCH_EXIT_CODES}");
        }
        for code in [DONE, USAGE_OR_NOT_FOUND, CLUSTER] {
            assert_eq!(documented(STATUS_EXIT_CODES, code), 1, "exit code {code} in:\n{STATUS_EXIT_CODES}");
        }
    }

    #[test]
    fn each_failure_has_its_own_code() {
        let timed_out = CliError::TimedOut {
            after: Duration::from_secs(1),
            waiting_for: "ws-1 to be Ready on gcp".into(),
            last_seen: "claimed".into(),
            hint: String::new(),
        };
        assert_eq!(timed_out.exit_code(), TIMED_OUT);
        assert!(timed_out.to_string().starts_with("timed out after 1.0s waiting for ws-1 to be Ready on gcp"));
        let missing = CliError::NotFound { namespace: "dev".into(), name: "ws-9".into() };
        assert_eq!(missing.exit_code(), USAGE_OR_NOT_FOUND);
        assert_eq!(missing.to_string(), r#"workspace "ws-9" not found in namespace "dev""#);
        assert_eq!(CliError::Interrupted(String::new()).exit_code(), INTERRUPTED);
        assert_eq!(CliError::Failed("deleted".into()).exit_code(), FAILED);
    }
}
