//! Test hooks, compiled only with the `test-hooks` cargo feature (the crash and race tests build
//! with it; the shipped binary has none, and every call below is then an empty inline fn).
//! - `COURIER_CRASH_AT=<step>`: the daemon kills itself with SIGKILL (no destructors, no
//!   flushing: like kill -9) when a flow reaches that step.
//! - `COURIER_PAUSE_AT=<step>` (+ `COURIER_PAUSE_MS`, default 2000): the flow sleeps there, so
//!   a test can act in that window (kill the client, DEL + ADD a container, ...).
//!
//! - `COURIER_DOCKER_CAPTURE=<file>`: every call on the Docker plugin socket is appended to the
//!   file as one JSON line `{"method", "request", "status", "response"}` (the fixture of the
//!   Docker front door's replay tests).
//!
//! Steps: after-intent, after-port-post (Neutron: the ports' POST answered, their tags not yet
//! set), after-port, after-veth, after-ovs-port, after-plug, after-up,
//! after-ready, detach-after-mark, detach-after-unplug, detach-after-port, docker-join and
//! docker-leave (a Join / Leave call arrived), release-after-mark (ReleaseAddress answered, the
//! port not deleted yet), reconcile-before-detach (a forgotten-DEL candidate was picked from the
//! unlocked snapshot; the lock is not taken yet), after-network-post (Neutron `network create`:
//! the POST answered, the tags not yet set); pool-after-slots (a refill recorded its slots, the
//! bulk create not asked yet), pool-after-create (the ports made, the slots not ready yet),
//! pool-before-return (a detach checked its pooled port, the record not deleted yet).

#[cfg(feature = "test-hooks")]
pub async fn point(step: &str) {
    use std::sync::OnceLock;
    static AT: OnceLock<(Option<String>, Option<String>, u64)> = OnceLock::new();
    let (crash, pause, ms) = AT.get_or_init(|| {
        (
            std::env::var("COURIER_CRASH_AT").ok(),
            std::env::var("COURIER_PAUSE_AT").ok(),
            std::env::var("COURIER_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2000),
        )
    });
    if crash.as_deref() == Some(step) {
        tracing::warn!(
            step,
            "COURIER_CRASH_AT reached: killing the daemon with SIGKILL"
        );
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
    if pause.as_deref() == Some(step) {
        tracing::warn!(step, ms, "COURIER_PAUSE_AT reached: pausing");
        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub async fn point(_step: &str) {}

/// Whether Docker calls are captured (`COURIER_DOCKER_CAPTURE`).
#[cfg(feature = "test-hooks")]
pub fn capturing() -> bool {
    std::env::var_os("COURIER_DOCKER_CAPTURE").is_some()
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn capturing() -> bool {
    false
}

/// Appends one Docker call to the capture file.
#[cfg(feature = "test-hooks")]
pub fn capture(method: &str, request: &[u8], status: u16, response: &[u8]) {
    use std::io::Write;
    let Some(path) = std::env::var_os("COURIER_DOCKER_CAPTURE") else {
        return;
    };
    let as_json = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(b).into()))
    };
    let line = serde_json::json!({
        "method": method,
        "request": as_json(request),
        "status": status,
        "response": as_json(response),
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn capture(_method: &str, _request: &[u8], _status: u16, _response: &[u8]) {}
