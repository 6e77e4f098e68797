//! The one-shot commands of `ibp-node` that are more than a few lines: their logic lives
//! here (testable, documented), the binary only parses flags and prints.

pub mod check;
pub mod keygen;
pub mod sla;
