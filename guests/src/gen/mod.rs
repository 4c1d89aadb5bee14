//! The program generator (placeholder until it lands).
