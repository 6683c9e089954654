//! The PROXY protocol version 2 header a service with `proxy_protocol =
//! "v2"` sends its upstream before any byte of the stream, so the
//! application learns who called: the original TCP client's addresses (as
//! the forwarding node accepted them) and the calling peer's name and id
//! (as its certificate proved them).
//!
//! ```text
//!  0..12  signature \r\n\r\n\0\r\nQUIT\n
//!  12     0x21 (version 2, PROXY), or 0x20 (LOCAL) when the forwarding
//!         node sent no addresses: then the receiver uses the connection's
//!  13     0x11 TCP over IPv4, 0x21 TCP over IPv6, 0x00 with LOCAL
//!  14..16 length of what follows, big-endian
//!         addresses: IPv4 src 4, dst 4, src port 2, dst port 2 (12 bytes)
//!                    IPv6 src 16, dst 16, src port 2, dst port 2 (36 bytes)
//!         TLVs (type 1, length 2 big-endian, value):
//!           0x02 PP2_TYPE_AUTHORITY  the calling peer's name (UTF-8)
//!           0xE0 (custom)            the calling peer's id (64 hex digits)
//! ```

use std::net::IpAddr;

use super::header::ClientAddrs;

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The calling peer's name.
pub const TLV_AUTHORITY: u8 = 0x02;
/// The calling peer's id, in hex (first of the custom range 0xE0-0xEF).
pub const TLV_PEER_ID: u8 = 0xE0;

/// The header for one stream.
pub fn v2(client: Option<ClientAddrs>, peer_name: &str, peer_id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(36 + 6 + peer_name.len() + peer_id.len());
    let (command, family) = match client.map(ClientAddrs::normalized) {
        None => (0x20, 0x00),
        Some(c) => {
            let family = match (c.source.ip(), c.destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    body.extend_from_slice(&s.octets());
                    body.extend_from_slice(&d.octets());
                    0x11
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        IpAddr::V6(v6) => v6.octets(),
                    };
                    body.extend_from_slice(&v6(s));
                    body.extend_from_slice(&v6(d));
                    0x21
                }
            };
            body.extend_from_slice(&c.source.port().to_be_bytes());
            body.extend_from_slice(&c.destination.port().to_be_bytes());
            (0x21, family)
        }
    };
    tlv(&mut body, TLV_AUTHORITY, peer_name.as_bytes());
    tlv(&mut body, TLV_PEER_ID, peer_id.as_bytes());
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(command);
    out.push(family);
    // Peer names are at most 255 bytes and ids 64: the length fits.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_client_byte_for_byte() {
        let client = ClientAddrs {
            source: "198.51.100.7:40000".parse().unwrap(),
            destination: "127.0.0.1:7000".parse().unwrap(),
        };
        let h = v2(Some(client), "a", "0f");
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12 + 4 + 5]);
        want.extend_from_slice(&[198, 51, 100, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x1b, 0x58]);
        want.extend_from_slice(&[0x02, 0, 1, b'a', 0xE0, 0, 2, b'0', b'f']);
        assert_eq!(h, want);
    }

    #[test]
    fn ipv6_and_unknown_clients() {
        let client = ClientAddrs {
            source: "[2001:db8::1]:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
        };
        let h = v2(Some(client), "a", "");
        assert_eq!(&h[12..14], &[0x21, 0x21]);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]) as usize, 36 + 4 + 3);
        assert_eq!(
            &h[16 + 16..16 + 32],
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        // No addresses: LOCAL, so the receiver keeps the connection's own.
        let h = v2(None, "a", "");
        assert_eq!(&h[12..16], &[0x20, 0x00, 0, 4 + 3]);
    }
}
