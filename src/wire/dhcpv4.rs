//! DHCPv4 parse/emit (placeholder: being written).
