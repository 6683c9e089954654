//! `Time`: the pure core's clock reading, a `Duration` since an epoch the
//! caller picks (the core never reads a clock itself).

/// A point in time, as the time since an epoch chosen by the caller.
pub type Time = std::time::Duration;
