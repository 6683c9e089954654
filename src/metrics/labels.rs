//! Every label value peerpool exports, as enums: a label set is a type, so
//! the same event cannot be counted under two spellings and no unknown
//! string can slip into a series. Each enum lists its values in `ALL`; the
//! first one is the series created at zero with its owner.

/// A metric label set: a fieldless enum whose values are known up front.
pub trait Label: Copy + Eq + 'static {
    /// Every value, in the order of [`Label::index`].
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    /// The position of this value in `ALL`.
    fn index(self) -> usize;
}

/// `ALL` joined with ", ", for help texts and docs.
pub fn list<L: Label>() -> String {
    L::ALL
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl Label for $name {
            const ALL: &'static [$name] = &[$($name::$variant,)+];

            fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

labels! {
    /// How a dial attempt ended (`peerpool_dial_attempts_total{result}`).
    DialResult {
        Ok => "ok",
        Timeout => "timeout",
        Refused => "refused",
        Tls => "tls",
        Error => "error",
    }
}

labels! {
    /// Why a connection closed, and for restarts why the old one ended.
    CloseReason {
        Timeout => "timeout",
        Reset => "reset",
        GoingAway => "going_away",
        Excess => "excess",
        /// Retired at `pool.max_connection_age` by the dialler.
        Aged => "aged",
        Refused => "refused",
        PeerClosed => "peer_closed",
        Local => "local",
        Error => "error",
    }
}

labels! {
    /// Why a handshake was refused.
    HandshakeReason {
        WrongId => "wrong_id",
        /// A CA-issued certificate naming another peer than the one dialled.
        WrongName => "wrong_name",
        /// Not self-signed, and no trusted CA vouches for it.
        Untrusted => "untrusted",
        UnknownPeer => "unknown_peer",
        BadCert => "bad_cert",
        Expired => "expired",
        BadSignature => "bad_signature",
        NoClientCert => "no_client_cert",
        Alpn => "alpn",
        Version => "version",
        Tls => "tls",
        Timeout => "timeout",
    }
}

labels! {
    /// What the gate in front of handshakes did with an Initial
    /// (`[handshake]`; accepted ones are not counted here).
    GateVerdict {
        /// Its source address failed too often and cools off: dropped
        /// without an answer, before any cryptography.
        Ignored => "ignored",
        /// `handshake.max_pending` handshakes were under way.
        Refused => "refused",
        /// Answered with a QUIC Retry (address validation).
        Retried => "retried",
    }
}

labels! {
    /// Why an inbound connection was refused after its handshake.
    InboundRefused {
        OverLimit => "over_limit",
        Unknown => "unknown",
        Draining => "draining",
    }
}

labels! {
    /// Why a pool operation failed: the `reason` of a failed stream open
    /// ([`crate::PoolError::reason`] is the only source of it).
    FailureReason {
        Timeout => "timeout",
        Unreachable => "unreachable",
        NoConnection => "no_connection",
        Draining => "draining",
        Connection => "connection",
        UnknownPeer => "unknown_peer",
        Invalid => "invalid",
        Stopped => "stopped",
    }
}

labels! {
    /// How a forwarded TCP connection or a served stream ended
    /// (`peerpool_forward_connections_total` and
    /// `peerpool_service_streams_total`, `result`).
    TransferResult {
        Ok => "ok",
        /// The TCP side reset or failed; the stream was reset.
        TcpReset => "tcp_reset",
        /// The stream was reset, stopped, or lost its connection.
        StreamReset => "stream_reset",
        /// The serving node drains, or this node's peer does.
        Draining => "draining",
        /// The serving node answered with a byte that is no status.
        BadStatus => "bad_status",
        BadHeader => "bad_header",
        BadVersion => "bad_version",
        UnknownService => "unknown_service",
        UpstreamUnreachable => "upstream_unreachable",
        HeaderTimeout => "header_timeout",
        HeaderTooLarge => "header_too_large",
        /// The service does not allow the calling peer (`allow`).
        Forbidden => "forbidden",
        /// No room in the node's stream memory (`node.stream_memory`):
        /// a service refused with `0x09`, or a forward waited in vain.
        Overloaded => "overloaded",
        /// No stream could be opened: the peer is unreachable, and so on.
        Unreachable => "unreachable",
        NoConnection => "no_connection",
        Timeout => "timeout",
        /// No byte moved either way for `forward.idle_timeout`: reset.
        Idle => "idle",
        Connection => "connection",
        UnknownPeer => "unknown_peer",
        Invalid => "invalid",
        Stopped => "stopped",
    }
}

impl From<FailureReason> for TransferResult {
    fn from(r: FailureReason) -> Self {
        match r {
            FailureReason::Timeout => TransferResult::Timeout,
            FailureReason::Unreachable => TransferResult::Unreachable,
            FailureReason::NoConnection => TransferResult::NoConnection,
            FailureReason::Draining => TransferResult::Draining,
            FailureReason::Connection => TransferResult::Connection,
            FailureReason::UnknownPeer => TransferResult::UnknownPeer,
            FailureReason::Invalid => TransferResult::Invalid,
            FailureReason::Stopped => TransferResult::Stopped,
        }
    }
}

labels! {
    /// How a resolution of a peer's host name ended.
    DnsResult {
        Ok => "ok",
        Error => "error",
    }
}

labels! {
    /// Why a forwarded connection was tried again on another endpoint.
    RetryReason {
        /// No stream could be opened on the endpoint.
        OpenFailed => "open_failed",
        /// The serving node answered with a failing status.
        Refused => "refused",
        /// The stream was reset before any byte of the answer.
        Reset => "reset",
    }
}

labels! {
    /// How a config reload ended.
    ReloadResult {
        Ok => "ok",
        Error => "error",
    }
}

labels! {
    /// Which way UDP bytes went.
    Flow {
        Sent => "sent",
        Received => "received",
    }
}

labels! {
    /// Actors the supervisor restarts.
    ActorKind {
        Peer => "peer",
    }
}

macro_rules! label_of {
    ($ty:ty) => {
        impl Label for $ty {
            const ALL: &'static [$ty] = &<$ty>::ALL;
            fn as_str(self) -> &'static str {
                <$ty>::as_str(self)
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_of!(crate::pool::PeerState);
label_of!(crate::pool::EndpointState);
label_of!(crate::pool::Direction);
label_of!(crate::pool::Strategy);

#[cfg(test)]
mod tests {
    use super::*;

    fn distinct_and_indexed<L: Label + std::fmt::Debug>() {
        for (i, a) in L::ALL.iter().enumerate() {
            assert_eq!(a.index(), i, "{a:?}");
            assert!(
                a.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{a:?}"
            );
            for b in &L::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }

    #[test]
    fn every_label_set_is_distinct_snake_case_and_indexed_in_order() {
        distinct_and_indexed::<DialResult>();
        distinct_and_indexed::<CloseReason>();
        distinct_and_indexed::<HandshakeReason>();
        distinct_and_indexed::<InboundRefused>();
        distinct_and_indexed::<FailureReason>();
        distinct_and_indexed::<TransferResult>();
        distinct_and_indexed::<Flow>();
        distinct_and_indexed::<ActorKind>();
        distinct_and_indexed::<DnsResult>();
        distinct_and_indexed::<RetryReason>();
        distinct_and_indexed::<ReloadResult>();
        distinct_and_indexed::<crate::pool::EndpointState>();
        distinct_and_indexed::<crate::pool::PeerState>();
        distinct_and_indexed::<crate::pool::Direction>();
        distinct_and_indexed::<crate::pool::Strategy>();
    }

    #[test]
    fn a_failed_open_keeps_its_label_as_a_transfer_result() {
        for r in FailureReason::ALL {
            assert_eq!(TransferResult::from(*r).as_str(), r.as_str());
        }
    }
}
