//! DHCPv4 server (placeholder: being written).
