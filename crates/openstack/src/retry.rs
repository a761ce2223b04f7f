//! Retrying transient failures with exponential backoff and jitter, within a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::Error;

/// Backoff: the n-th wait is a random duration in `[0, min(max, initial * 2^n)]` ("full
/// jitter"), never past the deadline.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    fn ceiling(&self, attempt: u32) -> Duration {
        let f = 2u32.saturating_pow(attempt.min(20));
        self.initial.saturating_mul(f).min(self.max)
    }

    /// The wait before retry `attempt` (0-based): random in `[0, ceiling]`.
    pub fn wait(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(fastrand::f64())
    }
}

/// How a revision-checked read-modify-write (`Neutron::modify_port`) retries a 412: at most
/// `attempts` PUTs, the wait before each retry drawn from `backoff` (so concurrent writers that
/// collided spread out instead of colliding again).
#[derive(Debug, Clone, Copy)]
pub struct RevisionRetry {
    pub attempts: u32,
    pub backoff: Backoff,
}

impl Default for RevisionRetry {
    /// 60 attempts, waits from ≤ 20 ms growing to ≤ 1 s: a writer gives up only after tens of
    /// seconds of losing, which on one port means a writer that never stops.
    fn default() -> Self {
        RevisionRetry {
            attempts: 60,
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_secs(1),
            },
        }
    }
}

/// Run `op` until it succeeds, fails with a non-transient error ([`Error::is_transient`]), or
/// `deadline` would be passed by the next wait; the last error is returned. `op` is always run
/// at least once.
pub async fn retry_transient<T, F, Fut>(
    deadline: Instant,
    backoff: Backoff,
    mut op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => {
                let wait = backoff.wait(attempt);
                let now = Instant::now();
                if now + wait >= deadline {
                    return Err(e);
                }
                tracing::debug!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "transient OpenStack error, retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RequestContext;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ctx() -> RequestContext {
        RequestContext {
            method: "GET".into(),
            path: "/x".into(),
            resource: None,
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let n = AtomicU32::new(0);
        let b = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        };
        let r = retry_transient(Instant::now() + Duration::from_secs(5), b, || async {
            if n.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(Error::from_status(ctx(), 503, ""))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!(r, 7);
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn permanent_error_not_retried_and_deadline_respected() {
        let n = AtomicU32::new(0);
        let e = retry_transient(
            Instant::now() + Duration::from_secs(5),
            Backoff::default(),
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::from_status(ctx(), 409, ""))
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), Some(409));
        assert_eq!(n.load(Ordering::SeqCst), 1);

        let start = Instant::now();
        let b = Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(50),
        };
        let e = retry_transient(start + Duration::from_millis(200), b, || async {
            Err::<(), _>(Error::from_status(ctx(), 502, ""))
        })
        .await
        .unwrap_err();
        assert_eq!(e.status(), Some(502));
        assert!(start.elapsed() < Duration::from_millis(300));
        assert_eq!(b.ceiling(0), Duration::from_millis(20));
        assert_eq!(b.ceiling(10), Duration::from_millis(50));
    }
}
