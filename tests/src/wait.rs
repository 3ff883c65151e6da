//! Waiting for a condition with a deadline instead of sleeping and hoping.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// Something a polled check can return: `bool`, `Option<T>` (ready with a value), or a
/// `Result` of either (an error counts as "not yet" and is reported if the deadline passes).
pub trait Condition {
    /// The value handed back once the condition holds.
    type Output;
    /// `Ok(value)` when the condition holds, `Err(last error, if any)` when not yet.
    fn outcome(self) -> Result<Self::Output, Option<String>>;
}

impl Condition for bool {
    type Output = ();
    fn outcome(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Condition for Option<T> {
    type Output = T;
    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<C: Condition, E: Display> Condition for Result<C, E> {
    type Output = C::Output;
    fn outcome(self) -> Result<C::Output, Option<String>> {
        match self {
            Ok(c) => c.outcome(),
            Err(e) => Err(Some(format!("{e:#}"))),
        }
    }
}

/// Polls `check` (starting every 10 ms, backing off to every 200 ms) until it holds, and
/// returns its value; fails after `timeout` naming `what` and the last error seen.
///
/// # Errors
/// The condition did not hold within `timeout`.
pub async fn wait_until<C, F, Fut>(timeout: Duration, what: impl Display, mut check: F) -> anyhow::Result<C::Output>
where
    C: Condition,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    let mut last_error = None;
    loop {
        match check().await.outcome() {
            Ok(v) => return Ok(v),
            Err(Some(e)) => last_error = Some(e),
            Err(None) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            match last_error {
                Some(e) => anyhow::bail!("timed out after {timeout:?} waiting for {what}: {e}"),
                None => anyhow::bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_value_once_ready_and_times_out_otherwise() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        })
        .await
        .expect("condition holds");
        assert_eq!(v, 3);

        let err = wait_until(Duration::from_millis(50), "never", || async { Err::<bool, _>("connection refused") })
            .await
            .expect_err("must time out");
        let msg = err.to_string();
        assert!(msg.contains("never") && msg.contains("connection refused"), "{msg}");
    }
}
