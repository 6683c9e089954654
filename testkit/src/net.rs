//! Free ports on loopback. A port found free is released at once, for a
//! child process (or a config) that binds it by itself; the race with
//! another binder is accepted in tests.

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A UDP socket on an ephemeral loopback port.
pub fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A free UDP port on loopback.
pub fn try_free_udp() -> std::io::Result<SocketAddr> {
    UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// A free TCP port on loopback.
pub fn try_free_tcp() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// [`try_free_udp`], for tests: panics if loopback has no port left.
pub fn free_udp() -> SocketAddr {
    try_free_udp().expect("a free UDP port on 127.0.0.1")
}

/// [`try_free_tcp`], for tests: panics if loopback has no port left.
pub fn free_tcp() -> SocketAddr {
    try_free_tcp().expect("a free TCP port on 127.0.0.1")
}

/// Closes `tcp` with a reset (RST) instead of a FIN: how a client that
/// dies, or gives up on a connection, looks to the other side.
pub fn reset(tcp: tokio::net::TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(&tcp, Some(std::time::Duration::ZERO));
    drop(tcp);
}
