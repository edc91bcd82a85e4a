//! TFTP server (placeholder: being written).
