//! The replication protocol layer: framing ([`frame`]) and connections ([`conn`]).

pub(crate) mod conn;
pub(crate) mod frame;
