//! Deterministic simulation harness (filled below).
