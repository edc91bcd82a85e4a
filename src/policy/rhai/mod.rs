//! Rhai policy (placeholder: being written).
