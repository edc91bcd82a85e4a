//! Wiring (placeholder: being written).
