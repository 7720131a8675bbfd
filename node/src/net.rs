//! Production transports.

pub mod quic;
