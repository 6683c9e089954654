//! The stream header and status byte: a small versioned wire format.
//!
//! ```text
//! header (forwarding node -> serving node), first bytes of every stream
//!   0..2    magic "PS"
//!   2       version (1)
//!   3..5    service name length L, u16 big-endian, 1..=255
//!   5..5+L  service name, UTF-8
//! status (serving node -> forwarding node), first byte back
//!   0x00 ok: the upstream's bytes follow
//!   anything else: an error (below); the serving node finishes its side
//!   after the status byte and stops the other with the same code
//! ```
//!
//! [`parse`] is pure and total: any byte string gives a header, a request
//! for more bytes, or a clean error.

use crate::config::MAX_SERVICE_NAME_BYTES;
use crate::metrics::labels::TransferResult;

pub const MAGIC: [u8; 2] = *b"PS";
pub const VERSION: u8 = 1;
/// Magic, version and length: what must be read before the name.
pub const FIXED_LEN: usize = 5;
/// The largest header a serving node reads.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + MAX_SERVICE_NAME_BYTES;

/// The status byte (and, for errors, the QUIC stream error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok = 0x00,
    /// Bad magic, empty or non-UTF-8 name.
    Malformed = 0x01,
    /// A header version this node does not speak.
    UnsupportedVersion = 0x02,
    /// No `[[service]]` of that name here.
    UnknownService = 0x03,
    /// The service's upstream refused or did not answer.
    UpstreamUnreachable = 0x04,
    /// The header did not arrive within `node.header_timeout`.
    HeaderTimeout = 0x05,
    /// The node is shutting down or the peer is being removed.
    Draining = 0x06,
    /// The name length is above 255.
    TooLarge = 0x07,
    /// The service does not allow the calling peer (`allow`).
    Forbidden = 0x08,
    /// The node's stream memory (`node.stream_memory`) is taken; another
    /// endpoint, or this one a little later, may have room.
    Overloaded = 0x09,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Ok,
        Status::Malformed,
        Status::UnsupportedVersion,
        Status::UnknownService,
        Status::UpstreamUnreachable,
        Status::HeaderTimeout,
        Status::Draining,
        Status::TooLarge,
        Status::Forbidden,
        Status::Overloaded,
    ];

    pub fn from_byte(b: u8) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as u8 == b)
    }

    /// The `result` label of a stream that got this status.
    pub fn label(self) -> TransferResult {
        match self {
            Status::Ok => TransferResult::Ok,
            Status::Malformed => TransferResult::BadHeader,
            Status::UnsupportedVersion => TransferResult::BadVersion,
            Status::UnknownService => TransferResult::UnknownService,
            Status::UpstreamUnreachable => TransferResult::UpstreamUnreachable,
            Status::HeaderTimeout => TransferResult::HeaderTimeout,
            Status::Draining => TransferResult::Draining,
            Status::TooLarge => TransferResult::HeaderTooLarge,
            Status::Forbidden => TransferResult::Forbidden,
            Status::Overloaded => TransferResult::Overloaded,
        }
    }

    pub fn code(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }
}

/// Stream error code: the TCP side of the stream was reset.
pub const RESET_TCP: u32 = 0x10;

/// Why bytes are not a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a peerpool stream header (magic {0:02x?})")]
    BadMagic([u8; 2]),
    #[error("stream header version {0}, this node speaks {VERSION}")]
    Version(u8),
    #[error("empty service name")]
    EmptyName,
    #[error("service name of {0} bytes; at most {MAX_SERVICE_NAME_BYTES}")]
    TooLarge(usize),
    #[error("service name is not UTF-8")]
    NotUtf8,
    #[error("the stream ended inside its header")]
    Truncated,
}

impl HeaderError {
    pub fn status(&self) -> Status {
        match self {
            HeaderError::BadMagic(_)
            | HeaderError::EmptyName
            | HeaderError::NotUtf8
            | HeaderError::Truncated => Status::Malformed,
            HeaderError::Version(_) => Status::UnsupportedVersion,
            HeaderError::TooLarge(_) => Status::TooLarge,
        }
    }
}

/// What [`parse`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header: the service name and the bytes it took.
    Complete { service: String, len: usize },
    /// A valid prefix; the header is `total` bytes long in all.
    Incomplete { total: usize },
}

/// Parses a header from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() >= 2 && buf[..2] != MAGIC {
        return Err(HeaderError::BadMagic([buf[0], buf[1]]));
    }
    if buf.len() >= 3 && buf[2] != VERSION {
        return Err(HeaderError::Version(buf[2]));
    }
    if buf.len() < FIXED_LEN {
        if buf.len() == 1 && buf[0] != MAGIC[0] {
            return Err(HeaderError::BadMagic([buf[0], 0]));
        }
        return Ok(Parsed::Incomplete { total: FIXED_LEN });
    }
    let name_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if name_len == 0 {
        return Err(HeaderError::EmptyName);
    }
    if name_len > MAX_SERVICE_NAME_BYTES {
        return Err(HeaderError::TooLarge(name_len));
    }
    let total = FIXED_LEN + name_len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete { total });
    }
    let name = std::str::from_utf8(&buf[FIXED_LEN..total]).map_err(|_| HeaderError::NotUtf8)?;
    Ok(Parsed::Complete {
        service: name.to_string(),
        len: total,
    })
}

/// The header that asks for `service`; `None` if the name cannot travel
/// (empty or longer than 255 bytes; config validation rules both out).
pub fn encode(service: &str) -> Option<Vec<u8>> {
    let len = service.len();
    if len == 0 || len > MAX_SERVICE_NAME_BYTES {
        return None;
    }
    let mut b = Vec::with_capacity(FIXED_LEN + len);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.extend_from_slice(service.as_bytes());
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_prefixes() {
        let h = encode("echo").unwrap();
        assert_eq!(
            parse(&h),
            Ok(Parsed::Complete {
                service: "echo".into(),
                len: 9
            })
        );
        for cut in 0..h.len() {
            assert!(
                matches!(parse(&h[..cut]), Ok(Parsed::Incomplete { .. })),
                "cut {cut}"
            );
        }
        // Bytes after the header are the payload, not part of it.
        let mut more = h.clone();
        more.extend_from_slice(b"payload");
        assert_eq!(
            parse(&more),
            Ok(Parsed::Complete {
                service: "echo".into(),
                len: 9
            })
        );
    }

    #[test]
    fn each_error_has_its_status() {
        assert_eq!(
            parse(b"GET / HTTP/1.1").unwrap_err().status(),
            Status::Malformed
        );
        assert_eq!(
            parse(b"PS\x02\x00\x01a").unwrap_err(),
            HeaderError::Version(2)
        );
        assert_eq!(
            parse(b"PS\x01\x00\x00").unwrap_err(),
            HeaderError::EmptyName
        );
        assert_eq!(
            parse(b"PS\x01\xff\xff").unwrap_err(),
            HeaderError::TooLarge(65535)
        );
        assert_eq!(
            parse(b"PS\x01\x00\x01\xff").unwrap_err(),
            HeaderError::NotUtf8
        );
        assert_eq!(parse(b"X").unwrap_err().status(), Status::Malformed);
        assert!(encode("").is_none());
        assert!(encode(&"x".repeat(256)).is_none());
        assert!(encode(&"x".repeat(255)).is_some());
    }

    #[test]
    fn status_bytes_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::from_byte(s as u8), Some(s));
        }
        assert_eq!(Status::from_byte(0xee), None);
    }

    proptest! {
        /// Any byte string: a header, a request for more, or a clean error.
        #[test]
        fn parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            match parse(&bytes) {
                Ok(Parsed::Complete { len, service }) => {
                    prop_assert!(len <= bytes.len() && len <= MAX_HEADER_LEN);
                    prop_assert_eq!(encode(&service).unwrap(), bytes[..len].to_vec());
                }
                Ok(Parsed::Incomplete { total }) => {
                    prop_assert!(total > bytes.len() && total <= MAX_HEADER_LEN);
                }
                Err(e) => prop_assert_ne!(e.status(), Status::Ok),
            }
        }

        #[test]
        fn every_valid_name_round_trips(name in "[a-zA-Z0-9._\u{e9}-]{1,60}") {
            let h = encode(&name).unwrap();
            prop_assert_eq!(parse(&h), Ok(Parsed::Complete { service: name.clone(), len: h.len() }));
        }

        /// Feeding a header byte by byte only ever asks for more, then completes.
        #[test]
        fn incremental_feeding(name in "[a-z]{1,255}") {
            let h = encode(&name).unwrap();
            for cut in 0..h.len() {
                let incomplete = matches!(parse(&h[..cut]), Ok(Parsed::Incomplete { .. }));
                prop_assert!(incomplete);
            }
        }
    }
}
