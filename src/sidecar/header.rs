//! The stream header and status byte: a small versioned wire format.
//!
//! ```text
//! header (forwarding node -> serving node), first bytes of every stream
//!   0..2    magic "PS"
//!   2       version (2; version 1 ends after the name)
//!   3..5    service name length L, u16 big-endian, 1..=255
//!   5..5+L  service name, UTF-8
//!   5+L     the TCP client's addresses: 0 none, 4 IPv4, 6 IPv6, then
//!           source IP, source port, destination IP, destination port
//!           (4+2+4+2 or 16+2+16+2 bytes, big-endian)
//! status (serving node -> forwarding node), first byte back
//!   0x00 ok: the upstream's bytes follow
//!   anything else: an error (below); the serving node finishes its side
//!   after the status byte and stops the other with the same code
//! ```
//!
//! [`parse`] is pure and total: any byte string gives a header, a request
//! for more bytes, or a clean error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::MAX_SERVICE_NAME_BYTES;
use crate::metrics::labels::TransferResult;

pub const MAGIC: [u8; 2] = *b"PS";
/// The version this node sends; it reads 1 and 2.
pub const VERSION: u8 = 2;
/// Magic, version and length: what must be read before the name.
pub const FIXED_LEN: usize = 5;
/// The largest header a serving node reads.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + MAX_SERVICE_NAME_BYTES + 1 + V6_ADDRS;
const V4_ADDRS: usize = 4 + 2 + 4 + 2;
const V6_ADDRS: usize = 16 + 2 + 16 + 2;

/// The forwarded TCP connection's two ends, as its client saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddrs {
    /// The client's address.
    pub source: SocketAddr,
    /// The forward's address the client connected to.
    pub destination: SocketAddr,
}

impl ClientAddrs {
    /// Both ends in one family: as they are when they share one, else
    /// both IPv6 (the IPv4 end mapped into it).
    pub fn normalized(self) -> ClientAddrs {
        if self.source.is_ipv4() == self.destination.is_ipv4() {
            return self;
        }
        let v6 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        ClientAddrs {
            source: v6(self.source),
            destination: v6(self.destination),
        }
    }

    /// The ends of an accepted connection, IPv4-mapped IPv6 addresses (a
    /// dual-stack listener's IPv4 clients) shown as the IPv4 they are.
    pub fn of(source: SocketAddr, destination: SocketAddr) -> ClientAddrs {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        ClientAddrs {
            source: canonical(source),
            destination: canonical(destination),
        }
    }
}

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
    #[error("stream header version {0}, this node speaks 1 and {VERSION}")]
    Version(u8),
    #[error("empty service name")]
    EmptyName,
    #[error("service name of {0} bytes; at most {MAX_SERVICE_NAME_BYTES}")]
    TooLarge(usize),
    #[error("service name is not UTF-8")]
    NotUtf8,
    #[error("the stream ended inside its header")]
    Truncated,
    #[error("client address family {0}; 0 (none), 4 or 6")]
    AddressFamily(u8),
}

impl HeaderError {
    pub fn status(&self) -> Status {
        match self {
            HeaderError::BadMagic(_)
            | HeaderError::EmptyName
            | HeaderError::NotUtf8
            | HeaderError::Truncated
            | HeaderError::AddressFamily(_) => Status::Malformed,
            HeaderError::Version(_) => Status::UnsupportedVersion,
            HeaderError::TooLarge(_) => Status::TooLarge,
        }
    }
}

/// What [`parse`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header: the service name, the client's addresses (none
    /// from a version 1 header), and the bytes it took.
    Complete {
        service: String,
        client: Option<ClientAddrs>,
        len: usize,
    },
    /// A valid prefix; the header is `total` bytes long in all.
    Incomplete { total: usize },
}

/// Parses a header from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() >= 2 && buf[..2] != MAGIC {
        return Err(HeaderError::BadMagic([buf[0], buf[1]]));
    }
    if buf.len() >= 3 && !(1..=VERSION).contains(&buf[2]) {
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
    let name_end = FIXED_LEN + name_len;
    // Version 1 ends after the name; version 2 adds the family byte and
    // the addresses it announces.
    let mut total = name_end + usize::from(buf[2] == 2);
    let family = buf.get(name_end).copied().filter(|_| buf[2] == 2);
    total += match family {
        None | Some(0) => 0,
        Some(4) => V4_ADDRS,
        Some(6) => V6_ADDRS,
        Some(f) => return Err(HeaderError::AddressFamily(f)),
    };
    if buf.len() < total {
        return Ok(Parsed::Incomplete { total });
    }
    let name = std::str::from_utf8(&buf[FIXED_LEN..name_end]).map_err(|_| HeaderError::NotUtf8)?;
    let client = family.and_then(|f| addrs(f, &buf[name_end + 1..total]));
    Ok(Parsed::Complete {
        service: name.to_string(),
        client,
        len: total,
    })
}

fn addrs(family: u8, b: &[u8]) -> Option<ClientAddrs> {
    let port = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let (source, destination) = match family {
        4 => {
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]));
            (
                SocketAddr::new(ip(0), port(4)),
                SocketAddr::new(ip(6), port(10)),
            )
        }
        6 => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            (
                SocketAddr::new(ip(0), port(16)),
                SocketAddr::new(ip(18), port(34)),
            )
        }
        _ => return None,
    };
    Some(ClientAddrs {
        source,
        destination,
    })
}

/// The header that asks for `service` on behalf of `client` (version 2);
/// `None` if the name cannot travel (empty or longer than 255 bytes;
/// config validation rules both out).
pub fn encode(service: &str, client: Option<ClientAddrs>) -> Option<Vec<u8>> {
    let len = service.len();
    if len == 0 || len > MAX_SERVICE_NAME_BYTES {
        return None;
    }
    let mut b = Vec::with_capacity(FIXED_LEN + len + 1 + V6_ADDRS);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.extend_from_slice(service.as_bytes());
    let Some(c) = client.map(ClientAddrs::normalized) else {
        b.push(0);
        return Some(b);
    };
    let mut end = |a: SocketAddr| {
        match a.ip() {
            IpAddr::V4(ip) => b.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => b.extend_from_slice(&ip.octets()),
        }
        b.extend_from_slice(&a.port().to_be_bytes());
    };
    let family = if c.source.is_ipv4() { 4 } else { 6 };
    let at = FIXED_LEN + len;
    end(c.source);
    end(c.destination);
    b.insert(at, family);
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_prefixes() {
        let h = encode("echo", None).unwrap();
        assert_eq!(
            parse(&h),
            Ok(Parsed::Complete {
                service: "echo".into(),
                client: None,
                len: 10
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
                client: None,
                len: 10
            })
        );
        // A version 1 header (an older forwarding node) still reads.
        assert_eq!(
            parse(b"PS\x01\x00\x04echopayload"),
            Ok(Parsed::Complete {
                service: "echo".into(),
                client: None,
                len: 9
            })
        );
    }

    #[test]
    fn client_addresses_travel_byte_for_byte() {
        let v4 = ClientAddrs {
            source: "198.51.100.7:40000".parse().unwrap(),
            destination: "127.0.0.1:7000".parse().unwrap(),
        };
        let h = encode("db", Some(v4)).unwrap();
        assert_eq!(
            h,
            [
                b'P', b'S', 2, 0, 2, b'd', b'b', 4, 198, 51, 100, 7, 0x9c, 0x40, 127, 0, 0, 1,
                0x1b, 0x58
            ]
        );
        let parsed = parse(&h).unwrap();
        assert_eq!(
            parsed,
            Parsed::Complete {
                service: "db".into(),
                client: Some(v4),
                len: h.len()
            }
        );
        // Mixed families travel as IPv6.
        let mixed = ClientAddrs {
            source: "[2001:db8::1]:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
        };
        let h = encode("db", Some(mixed)).unwrap();
        assert_eq!(h[7], 6);
        assert_eq!(h.len(), 8 + 36);
        let Ok(Parsed::Complete {
            client: Some(c), ..
        }) = parse(&h)
        else {
            panic!("complete")
        };
        assert_eq!(c.source, mixed.source);
        assert_eq!(c.destination, "[::ffff:127.0.0.1]:2".parse().unwrap());
        // A dual-stack listener's IPv4 client is IPv4 again.
        let mapped = ClientAddrs::of(
            "[::ffff:10.0.0.1]:5".parse().unwrap(),
            "[::ffff:10.0.0.2]:6".parse().unwrap(),
        );
        assert_eq!(encode("db", Some(mapped)).unwrap()[7], 4);
        assert_eq!(
            parse(b"PS\x02\x00\x01a\x05").unwrap_err(),
            HeaderError::AddressFamily(5)
        );
    }

    #[test]
    fn each_error_has_its_status() {
        assert_eq!(
            parse(b"GET / HTTP/1.1").unwrap_err().status(),
            Status::Malformed
        );
        assert_eq!(
            parse(b"PS\x03\x00\x01a").unwrap_err(),
            HeaderError::Version(3)
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
        assert!(encode("", None).is_none());
        assert!(encode(&"x".repeat(256), None).is_none());
        assert!(encode(&"x".repeat(255), None).is_some());
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
                Ok(Parsed::Complete { len, service, client }) => {
                    prop_assert!(len <= bytes.len() && len <= MAX_HEADER_LEN);
                    if bytes[2] == VERSION {
                        prop_assert_eq!(encode(&service, client).unwrap(), bytes[..len].to_vec());
                    }
                }
                Ok(Parsed::Incomplete { total }) => {
                    prop_assert!(total > bytes.len() && total <= MAX_HEADER_LEN);
                }
                Err(e) => prop_assert_ne!(e.status(), Status::Ok),
            }
        }

        #[test]
        fn every_valid_name_round_trips(name in "[a-zA-Z0-9._\u{e9}-]{1,60}") {
            let h = encode(&name, None).unwrap();
            prop_assert_eq!(parse(&h), Ok(Parsed::Complete { service: name.clone(), client: None, len: h.len() }));
        }

        /// Feeding a header byte by byte only ever asks for more, then completes.
        #[test]
        fn incremental_feeding(name in "[a-z]{1,255}") {
            let client = ClientAddrs {
                source: "[2001:db8::1]:1".parse().unwrap(),
                destination: "[2001:db8::2]:2".parse().unwrap(),
            };
            let h = encode(&name, Some(client)).unwrap();
            for cut in 0..h.len() {
                let incomplete = matches!(parse(&h[..cut]), Ok(Parsed::Incomplete { .. }));
                prop_assert!(incomplete);
            }
        }
    }
}
