//! QUIC and TLS: the endpoint, dialling, the hello, the control stream, and
//! close codes.
//!
//! One quinn [`Endpoint`](quinn::Endpoint) per node, on `node.listen`, is both
//! server and client. It must be created on a long-lived actix arbiter (the
//! System's): quinn spawns its drivers on the runtime that creates it, and
//! they die with that runtime.

pub(crate) mod backlog;
pub(crate) mod bpf;
pub mod codes;
pub(crate) mod control;
pub(crate) mod filter;
pub(crate) mod hello;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::config::{HandshakeConfig, NodeConfig};
use crate::identity::ca::Trust;
use crate::identity::{Identity, PeerId};
use crate::metrics::labels::{CloseReason, DialResult};
pub(crate) use backlog::Backlog;
use codes::CloseCode;
pub(crate) use filter::GateHandle;
use hello::{ExchangeError, Hello};
use tls::{Expected, InboundPolicy, TlsError};

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind node.listen {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("no async runtime: peerpool must start inside an actix System")]
    NoRuntime,
}

/// QUIC transport settings shared by both directions.
pub fn transport_config(node: &NodeConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(node.keep_alive_interval));
    // Validation bounds idle_timeout to a week, well inside QUIC's range.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(node.idle_timeout).ok());
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(node.max_concurrent_streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    // Validation keeps the windows below 2^62.
    let window = |v: u64| quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX);
    t.stream_receive_window(window(node.stream_receive_window));
    t.receive_window(window(node.receive_window));
    t.send_window(node.send_window);
    t
}

/// Binds the node's UDP socket on `node.listen`.
pub fn bind_socket(node: &NodeConfig) -> Result<std::net::UdpSocket, BindError> {
    let addr = node.listen;
    let socket_err = |source| BindError::Socket { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(socket_err)?;
    if addr.is_ipv6() {
        // Dual-stack where the OS allows it; not fatal where it does not.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(socket_err)?;
    Ok(socket.into())
}

/// Starts a QUIC endpoint with pinned-id TLS on an already bound UDP
/// socket (so tests and embedders can bind port 0 first and learn the
/// address).
pub fn endpoint(
    node: &NodeConfig,
    identity: &Identity,
    policy: Arc<dyn InboundPolicy>,
    udp: std::net::UdpSocket,
) -> Result<quinn::Endpoint, BindError> {
    endpoint_trusting(node, identity, policy, None, None, udp)
}

/// The server side of a node's endpoint: its TLS (who may connect, with
/// which certificate) and transport settings. Replaced on a reload.
pub(crate) fn server_config(
    node: &NodeConfig,
    identity: &Identity,
    policy: Arc<dyn InboundPolicy>,
    trust: Option<Arc<Trust>>,
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = tls::server_config(identity, node.alpn.as_bytes(), policy, trust)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(node)));
    Ok(server)
}

/// What the node's UDP socket shares with the rest of the node: the
/// handshake gate (the accept loop asks it) and the backlog (the streams
/// tell it how they are read).
#[derive(Clone)]
pub(crate) struct SocketShared {
    pub(crate) gate: Arc<GateHandle>,
    pub(crate) backlog: Arc<Backlog>,
}

impl SocketShared {
    pub(crate) fn new(gate: crate::pool::gate::GateRules) -> SocketShared {
        SocketShared {
            gate: GateHandle::new(gate),
            backlog: Backlog::new(),
        }
    }
}

/// Like [`endpoint`], also accepting certificates of the CAs in `trust`.
pub(crate) fn endpoint_trusting(
    node: &NodeConfig,
    identity: &Identity,
    policy: Arc<dyn InboundPolicy>,
    trust: Option<Arc<Trust>>,
    shared: Option<SocketShared>,
    udp: std::net::UdpSocket,
) -> Result<quinn::Endpoint, BindError> {
    let addr = udp.local_addr().unwrap_or(node.listen);
    let socket_err = |source| BindError::Socket { addr, source };
    let sock = socket2::SockRef::from(&udp);
    // Larger buffers: the default 208 KiB drops packets under bulk load.
    // The kernel caps these at net.core.{r,w}mem_max without an error.
    sock.set_recv_buffer_size(node.udp_recv_buffer)
        .map_err(socket_err)?;
    sock.set_send_buffer_size(node.udp_send_buffer)
        .map_err(socket_err)?;
    udp.set_nonblocking(true).map_err(socket_err)?;

    let server = server_config(node, identity, policy, trust)?;
    let runtime = quinn::default_runtime().ok_or(BindError::NoRuntime)?;
    // Without a second descriptor the process still drops what the
    // kernel would have.
    let kernel = udp.try_clone().ok();
    let inner = runtime.wrap_udp_socket(udp).map_err(socket_err)?;
    let SocketShared { gate, backlog } =
        shared.unwrap_or_else(|| SocketShared::new(HandshakeConfig::default().gate_rules()));
    let socket = Arc::new(filter::Filtered::new(inner, kernel, gate.clone(), backlog));
    tokio::spawn(bpf::keep_in_step(Arc::downgrade(&socket), gate));
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(identity),
        Some(server),
        socket,
        runtime,
    )
    .map_err(socket_err)
}

/// A secret derived one-way from the node's private key for `purpose`.
fn derived(identity: &Identity, purpose: &[u8]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(purpose);
    ctx.update(identity.key.secret_der());
    ctx.finish()
}

/// The endpoint config, with the stateless-reset key and the connection-ID
/// key derived from the node's private key instead of random ones. After a
/// crash and restart, a node recognises the connection IDs it issued before
/// and answers packets for those dead connections with a stateless reset
/// the peer can verify, so the peer drops them at its next packet (a
/// keep-alive at the latest) instead of after an idle timeout. The
/// derivations are one-way: they do not reveal the private key.
pub fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let reset = derived(identity, b"peerpool stateless reset key v1");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    let cid = derived(identity, b"peerpool connection id key v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // quinn sends at most one stateless reset per 20 ms by default: after a
    // restart, a node holding 600 connections would need 12 s to tell its
    // peers. Resets are smaller than the packets that trigger them (no
    // amplification), so a 1 ms spacing is still a bound, not a reflector.
    config.min_reset_interval(Duration::from_millis(1));
    config
}

/// The client config for dialling a peer pinned to `expected` (for raw
/// connections such as benchmark baselines); `transport` may be shared by
/// many client configs (see [`transport_config`]).
pub fn client_config(
    node: &NodeConfig,
    identity: &Identity,
    expected: PeerId,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    dial_config(
        node,
        identity,
        Expected::Pinned(vec![expected]),
        None,
        transport,
    )
}

/// The client config of one dial: expecting `expected`, trusting `trust`.
pub(crate) fn dial_config(
    node: &NodeConfig,
    identity: &Identity,
    expected: Expected,
    trust: Option<Arc<Trust>>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = tls::client_config_expecting(identity, node.alpn.as_bytes(), expected, trust)?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport);
    Ok(cfg)
}

/// Why one dial attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot start a connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("handshake failed: {0}")]
    Handshake(quinn::ConnectionError),
    #[error("refused by the peer: {}", .0.reason)]
    Refused(CloseCode),
    #[error("hello failed: {0}")]
    Hello(ExchangeError),
}

impl DialError {
    /// The `result` label of `peerpool_dial_attempts_total`.
    pub(crate) fn label(&self) -> DialResult {
        match self {
            DialError::Timeout(_) => DialResult::Timeout,
            DialError::Connect(_) => DialResult::Error,
            DialError::Refused(_) => DialResult::Refused,
            DialError::Handshake(e) | DialError::Hello(ExchangeError::Connection(e)) => match e {
                quinn::ConnectionError::TimedOut => DialResult::Timeout,
                quinn::ConnectionError::TransportError(_)
                | quinn::ConnectionError::ConnectionClosed(_) => DialResult::Tls,
                _ => DialResult::Error,
            },
            DialError::Hello(_) => DialResult::Error,
        }
    }
}

/// A connection the peer admitted.
pub(crate) struct Dialled {
    pub(crate) conn: quinn::Connection,
    /// Handshake plus hello.
    pub(crate) took: Duration,
    /// The peer's instance (see [`hello`]).
    pub(crate) instance: u64,
    /// The hello's stream, kept as the control stream.
    pub(crate) control: control::Control,
}

/// Dials `addr` (expecting the identity in `cfg`), exchanges the hello, and
/// returns the connection once the peer has admitted it.
pub(crate) async fn dial(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    hello: Hello,
    timeout: Duration,
) -> Result<Dialled, DialError> {
    let started = Instant::now();
    let attempt = async {
        let conn = endpoint
            .connect_with(cfg, addr, tls::SERVER_NAME)?
            .await
            .map_err(DialError::Handshake)?;
        match hello::dial(&conn, hello).await {
            Ok((instance, control)) => Ok((conn, instance, control)),
            Err(e) => {
                // A refusal arrives as a close with a documented code.
                if let Some(quinn::ConnectionError::ApplicationClosed(close)) = conn.close_reason()
                {
                    if let Some(code) = CloseCode::from_code(close.error_code.into_inner()) {
                        return Err(DialError::Refused(code));
                    }
                }
                codes::BAD_HELLO.close(&conn);
                Err(DialError::Hello(e))
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok((conn, instance, control))) => Ok(Dialled {
            conn,
            took: started.elapsed(),
            instance,
            control,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DialError::Timeout(timeout)),
    }
}

/// Why a connection ended, as a metric reason, and whether the pool should
/// treat it as a failure (back off before redialling).
pub(crate) fn close_reason(e: &quinn::ConnectionError) -> (CloseReason, bool) {
    use quinn::ConnectionError as E;
    match e {
        E::LocallyClosed => (CloseReason::Local, false),
        E::TimedOut => (CloseReason::Timeout, true),
        E::Reset => (CloseReason::Reset, true),
        E::ApplicationClosed(close) => match CloseCode::from_code(close.error_code.into_inner()) {
            Some(codes::EXCESS) => (CloseReason::Excess, false),
            Some(codes::AGED) => (CloseReason::Aged, false),
            Some(codes::GOING_AWAY) => (CloseReason::GoingAway, true),
            Some(codes::OVER_LIMIT) | Some(codes::UNKNOWN_PEER) | Some(codes::DRAINING) => {
                (CloseReason::Refused, true)
            }
            _ => (CloseReason::PeerClosed, true),
        },
        _ => (CloseReason::Error, true),
    }
}
