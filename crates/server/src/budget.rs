//! The bytes of OTLP requests in progress, bounded (`otlp.max_inflight_bytes`).
//!
//! Request bytes are counted as they arrive, frame by frame, before the whole body is in
//! memory: many large requests at once are refused with 429 / `RESOURCE_EXHAUSTED` (and a
//! one-second retry hint) as soon as their sum passes the budget, instead of after each was
//! read, inflated and decoded. What a request holds is released when its answer is ready.
//!
//! The count is of the bytes a request keeps: the body as received, then, once inflated, the
//! inflated body instead. The inflation itself runs on a worker thread, so at most one
//! request per worker has both at once (bounded by `max_body_size` each).

use crate::error::ApiError;
use skein_core::ErrorCode;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A byte budget shared by the HTTP and gRPC listeners.
#[derive(Debug)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
    limit: usize,
}

/// Bytes one request holds of a [`BodyBudget`]; released on drop.
#[derive(Debug, Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

impl BodyBudget {
    /// A budget of `limit` bytes (at least one byte, at most what a semaphore can count).
    pub fn new(limit: usize) -> Arc<Self> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self { sem: Arc::new(Semaphore::new(limit)), limit })
    }

    /// The budget of listeners taking bodies of up to `max_body` bytes: `max_inflight`, but at
    /// least two bodies' worth, since a request alone must always fit and while it is inflated
    /// it holds its compressed and its inflated bytes (each up to `max_body`, plus a gRPC
    /// frame's 5-byte prefix).
    pub fn for_limits(max_inflight: usize, max_body: usize) -> Arc<Self> {
        Self::new(max_inflight.max(max_body.saturating_mul(2).saturating_add(64)))
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes not held by any request now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Adds `bytes` to what `held` holds, or refuses the request.
    ///
    /// # Errors
    /// `ResourceExhausted` with a retry hint when the budget has less than `bytes` left.
    pub fn take(&self, held: &mut Held, bytes: usize) -> Result<(), ApiError> {
        if bytes == 0 {
            return Ok(());
        }
        let permit =
            u32::try_from(bytes).ok().and_then(|n| Arc::clone(&self.sem).try_acquire_many_owned(n).ok()).ok_or_else(|| self.busy())?;
        match &mut held.0 {
            Some(p) => p.merge(permit),
            None => held.0 = Some(permit),
        }
        Ok(())
    }

    /// What `held` holds, replaced by `bytes`. Growing takes the new amount before the old is
    /// released, since both buffers are in memory while the caller switches between them.
    ///
    /// # Errors
    /// As [`BodyBudget::take`]; `held` is unchanged then.
    pub fn replace(&self, held: &mut Held, bytes: usize) -> Result<(), ApiError> {
        if let Some(p) = &mut held.0
            && bytes <= p.num_permits()
        {
            drop(p.split(p.num_permits() - bytes));
            return Ok(());
        }
        let mut new = Held::default();
        self.take(&mut new, bytes)?;
        *held = new;
        Ok(())
    }

    fn busy(&self) -> ApiError {
        ApiError::new(
            ErrorCode::ResourceExhausted,
            format!("{} bytes of OTLP requests are being handled already (otlp.max_inflight_bytes); retry shortly", self.limit),
        )
        .with_retry_after(std::time::Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_held_until_dropped_and_refused_past_the_limit() {
        let b = BodyBudget::new(100);
        let mut one = Held::default();
        b.take(&mut one, 60).unwrap();
        b.take(&mut one, 30).unwrap();
        assert_eq!((one.bytes(), b.available()), (90, 10));
        let mut two = Held::default();
        let e = b.take(&mut two, 11).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        assert!(e.message.contains("otlp.max_inflight_bytes"), "{}", e.message);
        assert!(e.retry_after.is_some());
        // A refused replace keeps what was held; a granted one swaps it.
        assert!(b.replace(&mut one, 91).is_err());
        assert_eq!(one.bytes(), 90);
        b.take(&mut two, 10).unwrap();
        drop(two);
        drop(one);
        assert_eq!(b.available(), 100);
        let mut three = Held::default();
        b.take(&mut three, 50).unwrap();
        b.replace(&mut three, 40).unwrap();
        assert_eq!((three.bytes(), b.available()), (40, 60));
        // Shrinking needs nothing more from the budget, even when it is spent.
        let mut four = Held::default();
        b.take(&mut four, 60).unwrap();
        b.replace(&mut four, 59).unwrap();
        assert_eq!((four.bytes(), b.available()), (59, 1));
        // More than a semaphore call can count is refused, not truncated.
        assert!(b.take(&mut three, usize::MAX).is_err());
    }
}
