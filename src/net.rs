//! Sockets with IP_PKTINFO (placeholder: being written).
