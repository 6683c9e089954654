//! The kernel's share of the handshake gate: a classic BPF socket filter on
//! the node's UDP socket that drops the Initials of sources cooling off
//! (`pool::gate`) before they are queued, so a flooder that failed too often
//! no longer wakes the node at all.
//!
//! Dropping them in [`super::filter`] already skips all cryptography, but
//! every datagram still costs a wake-up of the endpoint's driver and a
//! `recvmmsg` (about 30 µs of the node's CPU per datagram on a 2-core VM,
//! most of the flood's cost). In the kernel it costs one pass through this
//! program in the receive path, and nothing in the node's process.
//!
//! The program is rebuilt whenever the list of sources cooling off changes
//! (a period starts or ends) and replaces the old one atomically. It holds
//! at most [`MAX_V4`] IPv4 and [`MAX_V6`] IPv6 sources (classic BPF has no
//! tables: each source is a compare, and a program has at most 4096
//! instructions); the rest are still dropped by [`super::filter`]. Packets
//! of established connections (short headers) leave the program after four
//! instructions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Weak};

use socket2::SockFilter;

use super::filter::{Filtered, GateHandle};

/// Sources the program holds at most, by family: 2 instructions per IPv4
/// source, 9 per IPv6 one, within the kernel's 4096 (`BPF_MAXINSNS`).
pub(crate) const MAX_V4: usize = 1024;
pub(crate) const MAX_V6: usize = 160;

// Opcodes of linux/filter.h (classic BPF): class | size | mode | op.
/// BPF_LD | BPF_W | BPF_ABS
const LD_W_ABS: u16 = 0x20;
/// BPF_LD | BPF_B | BPF_ABS
const LD_B_ABS: u16 = 0x30;
/// BPF_ALU | BPF_AND | BPF_K
const ALU_AND_K: u16 = 0x54;
/// BPF_ALU | BPF_RSH | BPF_K
const ALU_RSH_K: u16 = 0x74;
/// BPF_JMP | BPF_JA
const JMP_JA: u16 = 0x05;
/// BPF_JMP | BPF_JEQ | BPF_K
const JMP_JEQ_K: u16 = 0x15;
/// BPF_RET | BPF_K
const RET_K: u16 = 0x06;
/// Loads relative to the network (IP) header: `SKF_NET_OFF`.
const NET: u32 = (-0x10_0000i32) as u32;
/// A UDP socket filter sees the datagram from its UDP header on: the QUIC
/// packet's first byte is at offset 8.
const QUIC_FIRST_BYTE: u32 = 8;
const ACCEPT: u32 = u32::MAX;
const DROP: u32 = 0;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
    SockFilter::new(code, jt, jf, k)
}

/// The program that drops long-header Initials from `sources` and accepts
/// everything else. IPv4-mapped IPv6 sources (a dual-stack socket reports
/// IPv4 peers so) are matched as the IPv4 packets they arrive in. Sources
/// past [`MAX_V4`] / [`MAX_V6`] are left out.
pub(crate) fn program(sources: &[IpAddr]) -> Vec<SockFilter> {
    let mut v4: Vec<Ipv4Addr> = Vec::new();
    let mut v6: Vec<Ipv6Addr> = Vec::new();
    for source in within_limits(sources) {
        match source {
            IpAddr::V4(a) => v4.push(a),
            IpAddr::V6(a) => v6.push(a),
        }
    }
    let mut p = vec![
        // Form bit set, type bits 00: a long-header Initial. A datagram too
        // short to hold a first byte fails the load and is dropped (quinn
        // would drop it too).
        op(LD_B_ABS, 0, 0, QUIC_FIRST_BYTE),
        op(ALU_AND_K, 0, 0, 0xb0),
        op(JMP_JEQ_K, 1, 0, 0x80),
        op(RET_K, 0, 0, ACCEPT),
        // The IP version, then the family's list.
        op(LD_B_ABS, 0, 0, NET),
        op(ALU_RSH_K, 0, 0, 4),
        op(JMP_JEQ_K, 0, 1, 4),
    ];
    let v6_len = 9 * v6.len() + 1;
    // Past this jump, the IPv6 check (2), the IPv6 list: the IPv4 list.
    p.push(op(JMP_JA, 0, 0, (2 + v6_len) as u32));
    p.push(op(JMP_JEQ_K, 1, 0, 6));
    p.push(op(RET_K, 0, 0, ACCEPT));
    for a in &v6 {
        // The source address is at offset 8 of the IPv6 header; a word
        // that differs skips to the next source.
        for (i, word) in a.octets().chunks_exact(4).enumerate() {
            let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            let skip = (7 - 2 * i) as u8;
            p.push(op(LD_W_ABS, 0, 0, NET + 8 + 4 * i as u32));
            p.push(op(JMP_JEQ_K, 0, skip, word));
        }
        p.push(op(RET_K, 0, 0, DROP));
    }
    p.push(op(RET_K, 0, 0, ACCEPT));
    // The source address is at offset 12 of the IPv4 header.
    p.push(op(LD_W_ABS, 0, 0, NET + 12));
    for a in &v4 {
        p.push(op(JMP_JEQ_K, 0, 1, u32::from(*a)));
        p.push(op(RET_K, 0, 0, DROP));
    }
    p.push(op(RET_K, 0, 0, ACCEPT));
    p
}

/// Installs the program for as many of `sources` as the kernel takes,
/// halving the list until it fits (a socket's filter is charged to its
/// option memory, `net.core.optmem_max`: 20 KiB on older kernels). Returns
/// how many it holds.
fn install(socket: &Filtered, sources: &[IpAddr]) -> std::io::Result<usize> {
    let mut take = within_limits(sources);
    loop {
        match socket.set_kernel_filter(&program(&take)) {
            Ok(()) => return Ok(take.len()),
            Err(e) if take.is_empty() => return Err(e),
            Err(_) => take.truncate(take.len() / 2),
        }
    }
}

/// The first [`MAX_V4`] IPv4 and [`MAX_V6`] IPv6 of `sources`, IPv4-mapped
/// ones as IPv4.
fn within_limits(sources: &[IpAddr]) -> Vec<IpAddr> {
    let mut room = (MAX_V4, MAX_V6);
    sources
        .iter()
        .map(|s| s.to_canonical())
        .filter(|s| {
            let left = if s.is_ipv4() {
                &mut room.0
            } else {
                &mut room.1
            };
            let fits = *left > 0;
            *left = left.saturating_sub(1);
            fits
        })
        .collect()
}

/// Keeps the socket's filter equal to the gate's list of sources cooling
/// off, until the socket is gone: rebuilds it when a period starts (the
/// gate says so) and when the first one ends.
pub(crate) async fn keep_in_step(socket: Weak<Filtered>, gate: Arc<GateHandle>) {
    // The list the filter was last built from.
    let mut built: Vec<IpAddr> = Vec::new();
    // One line per process: the cause (the kernel's limits) stays.
    let mut warned = false;
    loop {
        let now = gate.now();
        let all = gate.lock().cooling_off(now);
        let next = all.iter().map(|c| c.until).min();
        let cooling: Vec<IpAddr> = all.iter().map(|c| c.source).collect();
        crate::metrics::handshake_sources_cooling(cooling.len());
        if cooling != built {
            let Some(socket) = socket.upgrade() else {
                return;
            };
            // What the kernel does not drop, `Filtered` still does, at the
            // cost of reading it.
            match install(&socket, &cooling) {
                Ok(held) if held < cooling.len() && !warned => {
                    warned = true;
                    tracing::warn!(held, cooling = cooling.len(), "the socket filter holds only some of the sources cooling off (at most 1024 IPv4 and 160 IPv6, fewer when net.core.optmem_max is small); the node drops the others' Initials itself");
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot install the socket filter for sources cooling off; the node drops their Initials itself");
                }
                _ => {}
            }
            built = cooling;
        }
        let changed = gate.changed();
        match next {
            Some(next) => {
                let _ = tokio::time::timeout(next.saturating_sub(now), changed).await;
            }
            None => changed.await,
        }
        if socket.strong_count() == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// What arrives at `rx` of one datagram from each of `from`, by
    /// first byte, with the program for `banned` attached.
    fn arrivals(rx: &UdpSocket, banned: &[IpAddr], from: &[(&UdpSocket, u8)]) -> Vec<(IpAddr, u8)> {
        socket2::SockRef::from(rx)
            .attach_filter(&program(banned))
            .unwrap();
        let to = rx.local_addr().unwrap();
        for (tx, first) in from {
            let mut d = vec![0u8; 1200];
            d[0] = *first;
            tx.send_to(&d, to).unwrap();
        }
        // A marker from an address never banned, sent last: once it is
        // here, everything the kernel let through is here (loopback keeps
        // order per socket).
        let marker = UdpSocket::bind((to.ip(), 0)).unwrap();
        marker.send_to(&[0x40; 1200], to).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            let (_, addr) = rx.recv_from(&mut buf).unwrap();
            if addr == marker.local_addr().unwrap() {
                return got;
            }
            got.push((addr.ip(), buf[0]));
        }
    }

    const INITIAL: u8 = 0xc3;
    const HANDSHAKE: u8 = 0xe3;
    const SHORT: u8 = 0x43;

    #[test]
    fn the_kernel_drops_only_initials_of_listed_ipv4_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bad = UdpSocket::bind("127.0.0.2:0").unwrap();
        let good = UdpSocket::bind("127.0.0.3:0").unwrap();
        let ip = |s: &UdpSocket| s.local_addr().unwrap().ip();
        let others: Vec<IpAddr> = (10..40)
            .map(|i| Ipv4Addr::new(10, 0, 0, i).into())
            .collect();
        let mut banned = others.clone();
        banned.push(ip(&bad));
        let got = arrivals(
            &rx,
            &banned,
            &[
                (&bad, INITIAL),
                (&bad, HANDSHAKE),
                (&bad, SHORT),
                (&good, INITIAL),
                (&good, SHORT),
            ],
        );
        assert_eq!(
            got,
            vec![
                (ip(&bad), HANDSHAKE),
                (ip(&bad), SHORT),
                (ip(&good), INITIAL),
                (ip(&good), SHORT)
            ]
        );
        // An empty list lets everything through, the mapped form of an
        // IPv4 address matches its IPv4 packets.
        let got = arrivals(&rx, &[], &[(&bad, INITIAL)]);
        assert_eq!(got, vec![(ip(&bad), INITIAL)]);
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped());
        let got = arrivals(&rx, &[mapped], &[(&bad, INITIAL), (&good, INITIAL)]);
        assert_eq!(got, vec![(ip(&good), INITIAL)]);
    }

    #[test]
    fn the_kernel_drops_only_initials_of_listed_ipv6_sources() {
        let Ok(rx) = UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        };
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        let near: IpAddr = "::2".parse().unwrap();
        let got = arrivals(&rx, &[near], &[(&tx, INITIAL)]);
        assert_eq!(
            got,
            vec![("::1".parse().unwrap(), INITIAL)],
            "::2 differs in the last word"
        );
        let others: Vec<IpAddr> = (1..20)
            .map(|i| format!("2001:db8::{i}").parse().unwrap())
            .collect();
        let mut banned = others;
        banned.push("::1".parse().unwrap());
        let got = arrivals(&rx, &banned, &[(&tx, INITIAL), (&tx, SHORT)]);
        assert_eq!(got, vec![("::1".parse().unwrap(), SHORT)]);
    }

    #[test]
    fn the_program_fits_the_kernels_limit_at_its_largest() {
        let v4: Vec<IpAddr> = (0..5000u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i).into())
            .collect();
        let v6: Vec<IpAddr> = (0..5000u128)
            .map(|i| Ipv6Addr::from(0x2001_0db8 << 96 | i).into())
            .collect();
        let all: Vec<IpAddr> = v4.into_iter().chain(v6).collect();
        let held = within_limits(&all);
        assert_eq!(held.iter().filter(|s| s.is_ipv4()).count(), MAX_V4);
        assert_eq!(held.len(), MAX_V4 + MAX_V6);
        let p = program(&all);
        assert!(p.len() <= 4096, "{} instructions", p.len());
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&rx).attach_filter(&p).unwrap();
    }
}
