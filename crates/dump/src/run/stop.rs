//! How a run (a backup or a restore) stops early: [`Stop`], and [`Bounds`], which races each
//! step against the run's cancel token and deadline.

use super::*;

/// Why a run stopped early (backups and restores alike).
pub(crate) enum Stop {
    Failed {
        step: String,
        exit_status: Option<i32>,
        message: String,
        stderr_tail: String,
    },
    Cancelled {
        step: String,
    },
}

pub(crate) fn fail(step: &str, message: impl Into<String>) -> Stop {
    Stop::Failed {
        step: step.into(),
        exit_status: None,
        message: message.into(),
        stderr_tail: String::new(),
    }
}

/// `HH:MM:SS` (hours may pass 24).
fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Waits until `deadline`, or forever.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What stops the steps of a run (a backup or a restore): its cancel token and its deadline.
pub(crate) struct Bounds<'a> {
    pub cancel: &'a CancellationToken,
    pub deadline: Option<Instant>,
    pub max_runtime: Option<Duration>,
}

impl Bounds<'_> {
    /// `fut`, unless the run is cancelled or out of time first.
    pub async fn guarded<T>(&self, step: &str, fut: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Stop::Cancelled { step: step.into() }),
            () = until(self.deadline) => Err(self.timed_out(step)),
            v = fut => Ok(v),
        }
    }

    pub fn timed_out(&self, step: &str) -> Stop {
        let limit = self.max_runtime.unwrap_or_default();
        fail(step, format!("maximum runtime {} exceeded", hms(limit)))
    }

    /// Runs blocking work on the blocking pool, guarded; `abort` is raised when the guard fires.
    pub async fn blocking<T: Send + 'static>(
        &self,
        step: &str,
        abort: Arc<AtomicBool>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stop> {
        let handle = tokio::task::spawn_blocking(f);
        let r = self.guarded(step, handle).await;
        if r.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        r?.map_err(|e| fail(step, format!("internal error: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hms_format() {
        assert_eq!(hms(Duration::from_secs(600)), "00:10:00");
        assert_eq!(hms(Duration::from_secs(1)), "00:00:01");
        assert_eq!(hms(Duration::from_secs(26 * 3600 + 61)), "26:01:01");
    }
}
