//! Hostile input: garbage datagrams at the listener, every kind of bad TLS
//! peer, abusive admin requests.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerpool::config::PeerConfig;
use peerpool::identity::{generate_pem, Identity, PeerId};
use peerpool::pool::Strategy;
use peerpool::transport::{self, tls};
use peerpool::{IncomingStream, Pool};
use peerpool_testkit::prelude::*;
use rand::{Rng, SeedableRng};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_garbage_datagrams_change_nothing() {
    let upstream = echo_upstream().await;
    let s = setup(upstream, Duration::from_secs_f64(5.0));
    let mut b = NodeProc::start(bin!(), &s.b_config, s.b_log.clone());
    let _a = NodeProc::start(bin!(), &s.a_config, s.a_log.clone());
    let admin = s.a_admin;
    tokio::task::spawn_blocking(move || wait_ready(admin, "node a", Duration::from_secs(20)))
        .await
        .unwrap();
    let target = s.b_udp;
    let sent = tokio::task::spawn_blocking(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut buf = [0u8; 1500];
        let mut sent = 0;
        for i in 0..100_000u32 {
            let len = rng.random_range(1..=1500);
            rng.fill(&mut buf[..len]);
            match i % 4 {
                // A QUIC long header (Initial, version 1), then garbage or
                // a truncated body.
                0 => {
                    buf[0] = 0xc0 | (buf[0] & 0x0f);
                    buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
                // A short header with a random connection id.
                1 => buf[0] = 0x40 | (buf[0] & 0x3f),
                _ => {}
            }
            if sock.send_to(&buf[..len], target).is_ok() {
                sent += 1;
            }
            if i % 2000 == 0 {
                // Let the kernel queue drain a little: the point is the
                // node's parser, not the socket buffer.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    })
    .await
    .unwrap();
    assert!(sent > 90_000);
    // b is alive and serves.
    assert!(
        b.wait(Duration::from_millis(10)).is_none(),
        "b exited: {}",
        b.log_text()
    );
    through(s.forward, b"still serving after the garbage")
        .await
        .unwrap();
    let (status, _) = tokio::task::spawn_blocking(move || {
        http("GET", &format!("http://{admin}/healthz"), None, None)
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
}

/// Accepts any server certificate (checks only the handshake signature):
/// for clients that are bad in other ways.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents `cert` but signs with `key`: someone who copied a certificate.
#[derive(Debug)]
struct MismatchedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for MismatchedCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let provider = tls::provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
}

fn quic(mut tls_cfg: rustls::ClientConfig, alpn: &[u8]) -> quinn::ClientConfig {
    tls_cfg.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// Tries to reach a serving stream on `server` with `cfg`: handshake, then
/// a stream. Returns whether any stream was answered.
async fn try_serve(cfg: quinn::ClientConfig, server: SocketAddr) -> bool {
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let attempt = async {
        let conn = ep
            .connect_with(cfg, server, tls::SERVER_NAME)
            .ok()?
            .await
            .ok()?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(b"anyone there?").await.ok()?;
        send.finish().ok()?;
        let mut buf = [0u8; 1];
        recv.read_exact(&mut buf).await.ok()
    };
    let served = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .is_some();
    ep.close(0u32.into(), b"");
    served
}

#[actix_rt::test]
async fn every_bad_tls_peer_is_refused_and_counted_before_any_stream() {
    init_tracing();
    let handle = peerpool::metrics::install();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let handler = Arc::new(move |_s: IncomingStream| {
        counter.fetch_add(1, Ordering::Relaxed);
        async {}
    });
    let good = Identity::generate().unwrap();
    let server_id = Identity::generate().unwrap();
    let mut cfg = config(1, Strategy::RoundRobin);
    cfg.peers = vec![PeerConfig::pinned("good", good.id, None)];
    let sock = udp();
    let server = sock.local_addr().unwrap();
    let pool = Pool::start_with_socket(cfg.clone(), server_id.clone(), handler, sock).unwrap();
    let node = cfg.node.clone();
    let failures = |reason: &str| {
        metric(
            &handle.render(),
            "peerpool_handshake_failures_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    let transport_cfg = Arc::new(transport::transport_config(&node));
    let pinned = |identity: &Identity, expected: PeerId| {
        transport::client_config(&node, identity, expected, transport_cfg.clone()).unwrap()
    };

    let now = time::OffsetDateTime::now_utc();
    let expired = generate_pem(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap()
    .into_identity()
    .unwrap();
    let stranger = Identity::generate().unwrap();
    let key_provider = tls::provider().key_provider;
    let mismatched = rustls::sign::CertifiedKey::new(
        vec![good.cert.clone()],
        key_provider
            .load_private_key(stranger.key.clone_key())
            .unwrap(),
    );
    let cases: Vec<(&str, quinn::ClientConfig)> = vec![
        // The server presents an id other than the one pinned: the dialler
        // refuses it (counted on the dialling side, this process too).
        ("wrong_id", pinned(&good, Identity::generate().unwrap().id)),
        ("expired", pinned(&expired, server_id.id)),
        (
            "bad_signature",
            quic(
                builder().with_client_cert_resolver(Arc::new(MismatchedCert(Arc::new(mismatched)))),
                cfg.node.alpn.as_bytes(),
            ),
        ),
        (
            "no_client_cert",
            quic(builder().with_no_client_auth(), cfg.node.alpn.as_bytes()),
        ),
        ("alpn", {
            let tls_cfg = tls::client_config(&good, b"h3", server_id.id).unwrap();
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg).unwrap();
            quinn::ClientConfig::new(Arc::new(crypto))
        }),
        ("unknown_peer", pinned(&stranger, server_id.id)),
    ];
    for (reason, client) in cases {
        let before = failures(reason);
        let answered = try_serve(client, server).await;
        assert!(!answered, "{reason}: a stream was served");
        wait_for(&format!("{reason} counted"), Duration::from_secs(5), || {
            failures(reason) > before
        })
        .await;
    }
    assert_eq!(
        served.load(Ordering::Relaxed),
        0,
        "no stream reached the handler"
    );
    // The good peer still gets through: the refusals were specific.
    let mut good_cfg = config(1, Strategy::RoundRobin);
    good_cfg.peers = vec![PeerConfig::pinned("server", server_id.id, Some(server))];
    let good_pool = Pool::start_with_socket(good_cfg, good.clone(), echo(), udp()).unwrap();
    wait_for("the good peer connects", Duration::from_secs(10), || {
        usable(&good_pool, &server_id.id) == 1
    })
    .await;
    let mut s = good_pool.open_stream(&server_id.id).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.send.write_all(b"hello").await.unwrap();
    wait_for(
        "the good peer's stream served",
        Duration::from_secs(5),
        || served.load(Ordering::Relaxed) == 1,
    )
    .await;
    drop(pool);
}

#[actix_rt::test]
async fn abusive_admin_requests_get_4xx_and_break_nothing() {
    init_tracing();
    let (a, _b) = pair(&config(1, Strategy::RoundRobin), true, false);
    let mut cfg = config(1, Strategy::RoundRobin);
    cfg.admin.token = "t0ken".into();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let handle = peerpool::metrics::install();
    let _server =
        peerpool::sidecar::admin::start(admin, a.pool.clone(), handle, "t0ken".into()).unwrap();
    let base = format!("http://{admin_addr}");
    let tok = Some("t0ken");
    for path in [
        "/peers/..%2F..%2Fetc%2Fpasswd",
        "/peers/%2e%2e",
        "/peers/b%00",
        "/peers/a/b/c",
    ] {
        let (status, _) = http_async("DELETE", &format!("{base}{path}"), tok, None).await;
        assert!((400..500).contains(&status), "{path}: {status}");
    }
    let id = Identity::generate().unwrap().id;
    for name in ["../../etc", "..", "a/b", "x\\y", "%2e%2e", ""] {
        let body = serde_json::json!({ "name": name, "id": id.to_string() }).to_string();
        let (status, resp) = http_async("POST", &format!("{base}/peers"), tok, Some(&body)).await;
        assert_eq!(status, 400, "{name:?}: {resp}");
    }
    for body in [
        "",
        "null",
        "[]",
        "{\"name\":",
        &"{".repeat(10_000),
        "\u{0}\u{1}garbage",
    ] {
        let (status, _) = http_async("POST", &format!("{base}/peers"), tok, Some(body)).await;
        assert!((400..500).contains(&status), "{body:?}: {status}");
    }
    // A thousand concurrent requests, half without the token.
    let started = Instant::now();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let url = format!("{base}/peers");
            tokio::task::spawn_blocking(move || {
                let token = (i % 2 == 0).then_some("t0ken");
                (i, http("GET", &url, token, None).0)
            })
        })
        .collect();
    for c in calls {
        let (i, status) = c.await.unwrap();
        assert_eq!(status, if i % 2 == 0 { 200 } else { 401 }, "request {i}");
    }
    println!("1000 concurrent admin requests in {:?}", started.elapsed());
    assert_eq!(
        http_async("GET", &format!("{base}/healthz"), None, None)
            .await
            .0,
        200
    );
    assert_eq!(a.pool.peers().len(), 1, "nothing was added or removed");
}
