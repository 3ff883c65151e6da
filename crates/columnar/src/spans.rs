//! Span batches (placeholder while being written).
