//! Signals to the child processes the tools (and the integration tests) start.

pub use rustix::process::Signal;

/// Why a signal was not delivered to a child.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("send {signal:?}: the child has already been reaped")]
    Reaped { signal: Signal },
    #[error("send {signal:?} to child {pid}: {source}")]
    Kill {
        pid: u32,
        signal: Signal,
        #[source]
        source: std::io::Error,
    },
}

/// Sends `signal` to `child`, a process we spawned. While the child is not reaped (its id is
/// known) its pid cannot name another process, so this is kill(2) without the risk.
pub fn signal_child(child: &tokio::process::Child, signal: Signal) -> Result<(), SignalError> {
    let pid = child.id().ok_or(SignalError::Reaped { signal })?;
    let kill = || {
        let raw = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
        let raw = raw.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a process id"))?;
        rustix::process::kill_process(raw, signal).map_err(std::io::Error::from)
    };
    kill().map_err(|source| SignalError::Kill { pid, signal, source })
}
