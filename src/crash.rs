//! Crash points for the crash-safety tests: with `COURIER_CRASH_AT=<step>` in the daemon's
//! environment, the daemon kills itself with SIGKILL (no destructors, no flushing: like kill -9)
//! when the attach or detach flow reaches that step (steps: after-intent, after-port, after-veth,
//! after-ovs-port, after-plug, after-up, after-ready, detach-after-mark, detach-after-unplug,
//! detach-after-port). Unset in production: a no-op.

use std::sync::OnceLock;

static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();

pub fn point(step: &str) {
    let at = CRASH_AT.get_or_init(|| std::env::var("COURIER_CRASH_AT").ok());
    if at.as_deref() == Some(step) {
        tracing::warn!(
            step,
            "COURIER_CRASH_AT reached: killing the daemon with SIGKILL"
        );
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}
