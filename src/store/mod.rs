//! Persistence (placeholder; see issue 4).
