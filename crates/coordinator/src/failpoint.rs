//! Fail points for the fault-injection tests (`tests/faults.rs`): places where a test
//! makes the process die at once, as a SIGKILL would, or stall inside a transaction.
//! They exist only in builds with the `fail-points` feature (`make test` enables it;
//! `make run` and release builds do not), and do nothing unless the `FAILPOINTS`
//! environment variable names them (the `fail` crate's syntax, e.g.
//! `FAILPOINTS='after-commit-before-ack=20*off->return'`: the 21st time, die).

/// A batch committed; its deliveries are not yet acked and its messages not yet
/// handed to the publisher. Dying here redelivers messages already applied.
pub const AFTER_COMMIT_BEFORE_ACK: &str = "after-commit-before-ack";
/// The broker confirmed messages; their outbox rows are not yet marked sent. Dying
/// here makes the relay send them again, with the same message ids.
pub const AFTER_CONFIRM_BEFORE_MARKED_SENT: &str = "after-confirm-before-marked-sent";
/// Inside a batch's transaction, everything written, before the commit (configured
/// as `return(<ms>)`, it waits that long there: a test ends the session meanwhile).
pub const BEFORE_COMMIT: &str = "before-commit";

/// On shutdown, before the relay's last flush of the outbox (configured as
/// `return(<ms>)`, it hangs there: a test shows `shutdown.timeout` ends the wait).
pub const BEFORE_OUTBOX_FLUSH: &str = "before-outbox-flush";

/// The dead-letter collector stored what the broker dead-lettered; it has not acked
/// it yet. Dying here redelivers it to the collector, which must not store it twice.
pub const DLX_AFTER_COMMIT_BEFORE_ACK: &str = "dlx-after-commit-before-ack";

/// Configures the fail points named in `FAILPOINTS` for the life of the process.
#[cfg(feature = "fail-points")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    Some(fail::FailScenario::setup())
}

#[cfg(not(feature = "fail-points"))]
pub fn setup() -> Option<()> {
    None
}

/// Dies at once (SIGKILL to itself) when the test configured `name`.
pub fn crash(name: &str) {
    #[cfg(feature = "fail-points")]
    if fail::eval(name, |_| ()).is_some() {
        tracing::warn!(fail_point = name, "fail point: killing this process");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
    #[cfg(not(feature = "fail-points"))]
    let _ = name;
}

/// Waits the configured milliseconds when the test configured `name` as `return(ms)`.
pub async fn stall(name: &str) {
    #[cfg(feature = "fail-points")]
    if let Some(Some(ms)) = fail::eval(name, |arg| arg.and_then(|a| a.parse::<u64>().ok())) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    #[cfg(not(feature = "fail-points"))]
    let _ = name;
}
