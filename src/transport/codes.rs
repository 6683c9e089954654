//! QUIC application error codes peerpool closes connections with.
//!
//! They are part of the protocol between nodes (README "Wire protocol"): a
//! node that sees one knows why the other end closed and whether to back off.

use quinn::VarInt;

/// A documented reason for closing a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    pub code: u32,
    pub reason: &'static str,
}

impl CloseCode {
    pub fn var_int(self) -> VarInt {
        VarInt::from_u32(self.code)
    }

    /// Closes `conn` with this code and its reason text.
    pub fn close(self, conn: &quinn::Connection) {
        conn.close(self.var_int(), self.reason.as_bytes());
    }

    pub fn from_code(code: u64) -> Option<CloseCode> {
        ALL.iter().copied().find(|c| u64::from(c.code) == code)
    }
}

/// The node is shutting down: redial later or elsewhere, no idle timeout needed.
pub const GOING_AWAY: CloseCode = CloseCode {
    code: 0x1,
    reason: "going away",
};
/// Simultaneous dials left the pair over N; this duplicate is retired.
pub const EXCESS: CloseCode = CloseCode {
    code: 0x2,
    reason: "excess connection",
};
/// Inbound refused: this node already holds N connections to the dialler.
pub const OVER_LIMIT: CloseCode = CloseCode {
    code: 0x3,
    reason: "over the per-peer connection limit",
};
/// Inbound refused: the dialler's id is not an allowed peer.
pub const UNKNOWN_PEER: CloseCode = CloseCode {
    code: 0x4,
    reason: "unknown peer",
};
/// The hello carried a protocol version this node does not speak.
pub const VERSION_MISMATCH: CloseCode = CloseCode {
    code: 0x5,
    reason: "unsupported hello version",
};
/// The hello was malformed, late, or named another identity.
pub const BAD_HELLO: CloseCode = CloseCode {
    code: 0x6,
    reason: "bad hello",
};
/// The peer was removed from this node (after draining).
pub const REMOVED: CloseCode = CloseCode {
    code: 0x7,
    reason: "peer removed",
};
/// The actor owning this connection restarted; the pool redials.
pub const RESTART: CloseCode = CloseCode {
    code: 0x8,
    reason: "peer actor restarted",
};
/// Inbound refused: the peer is being drained on this node.
pub const DRAINING: CloseCode = CloseCode {
    code: 0x9,
    reason: "draining",
};

/// An operator (or the demo) closed this connection; the pool redials it.
pub const CLOSED_BY_OPERATOR: CloseCode = CloseCode {
    code: 0xa,
    reason: "closed by operator",
};

/// The peer restarted: this connection belongs to its previous process.
pub const STALE: CloseCode = CloseCode {
    code: 0xb,
    reason: "previous instance of the peer",
};

/// The peer broke the control stream's rules (a second RETIRE or DONE).
pub const PROTOCOL_VIOLATION: CloseCode = CloseCode {
    code: 0xc,
    reason: "control stream protocol violation",
};

/// The connection reached `pool.max_connection_age` and was handed over
/// (RETIRE/DONE); the dialler has a replacement on its way.
pub const AGED: CloseCode = CloseCode {
    code: 0xd,
    reason: "connection reached its maximum age",
};

pub const ALL: [CloseCode; 13] = [
    GOING_AWAY,
    EXCESS,
    OVER_LIMIT,
    UNKNOWN_PEER,
    VERSION_MISMATCH,
    BAD_HELLO,
    REMOVED,
    RESTART,
    DRAINING,
    CLOSED_BY_OPERATOR,
    STALE,
    PROTOCOL_VIOLATION,
    AGED,
];

/// QUIC stream error codes used by the pool itself (the sidecar's stream
/// codes are in `sidecar::header`).
pub mod stream {
    /// A stream the peer opened while this node drains it, refused.
    pub const DRAINING: u32 = 0x16;
    /// A stream dropped without being finished (a failed or aborted task):
    /// reset, so the peer never takes it for a complete one.
    pub const DROPPED: u32 = 0x17;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_round_trip() {
        for (i, a) in ALL.iter().enumerate() {
            assert_eq!(CloseCode::from_code(a.code.into()), Some(*a));
            for b in &ALL[i + 1..] {
                assert_ne!(a.code, b.code);
            }
        }
        assert_eq!(CloseCode::from_code(0), None);
    }
}
