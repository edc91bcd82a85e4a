//! TFTP packet parse/emit (placeholder: being written).
