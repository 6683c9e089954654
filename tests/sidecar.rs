//! The sidecar in-process: the admin API, and hostile or broken streams
//! against a serving node, over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerpool::config::{Config, Loaded, PeerConfig, ServiceConfig};
use peerpool::identity::Identity;
use peerpool::pool::Strategy;
use peerpool::sidecar::header::{self, Status};
use peerpool::sidecar::{Listeners, Node};
use peerpool::{IncomingStream, Pool};
use peerpool_testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An echo upstream on loopback, served from this process.
async fn echo_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(peerpool_testkit::load::serve_echo(l));
    addr
}

fn listeners(config: &Config) -> Listeners {
    let forwards = config
        .forward
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().into())
        .collect();
    Listeners {
        udp: udp(),
        admin: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        forwards,
    }
}

/// A serving node "b" and a raw pool "a" that lists it. `b` lists `a`
/// without an address plus `extra_peers`.
async fn serving_pair(mut cfg_b: Config, extra_peers: Vec<PeerConfig>) -> (Node, Pool, Identity) {
    let id_a = Identity::generate().unwrap();
    let id_b = Identity::generate().unwrap();
    cfg_b.peers.push(PeerConfig::pinned("a", id_a.id, None));
    cfg_b.peers.extend(extra_peers);
    let l = listeners(&cfg_b);
    let b_addr = l.udp.local_addr().unwrap();
    let node = Node::start(
        Loaded {
            config: cfg_b,
            identity: id_b.clone(),
            trust: None,
        },
        l,
    )
    .unwrap();
    let mut cfg_a = config(2, Strategy::RoundRobin);
    cfg_a.peers = vec![PeerConfig::pinned("b", id_b.id, Some(b_addr))];
    let nothing = Arc::new(|_s: IncomingStream| async {});
    let a = Pool::start_with_socket(cfg_a, id_a, nothing, udp()).unwrap();
    wait_for("a connected to b", Duration::from_secs(10), || {
        usable(&a, &id_b.id) == 2
    })
    .await;
    (node, a, id_b)
}

#[actix_rt::test]
async fn admin_api_answers_every_documented_status() {
    init_tracing();
    let mut cfg = config(2, Strategy::RoundRobin);
    cfg.admin.token = "s3cret".into();
    let dead = free_udp();
    let ghost = PeerConfig::pinned("ghost", Identity::generate().unwrap().id, Some(dead));
    let (node, _a, _idb) = serving_pair(cfg, vec![ghost]).await;
    let base = format!("http://{}", node.admin_addr());
    let tok = Some("s3cret");
    let url = |p: &str| format!("{base}{p}");

    // /healthz needs no token.
    assert_eq!(
        http_async("GET", &url("/healthz"), None, None).await,
        (200, "ok".into())
    );
    // Everything else does.
    for path in ["/readyz", "/peers", "/metrics"] {
        assert_eq!(
            http_async("GET", &url(path), None, None).await.0,
            401,
            "{path}"
        );
        assert_eq!(
            http_async("GET", &url(path), Some("wrong"), None).await.0,
            401,
            "{path}"
        );
    }
    assert_eq!(
        http_async("DELETE", &url("/peers/ghost"), None, None)
            .await
            .0,
        401
    );
    assert_eq!(
        http_async("POST", &url("/peers"), None, Some("{}")).await.0,
        401
    );

    // The ghost has an address and no connection: not ready, and named.
    let (status, body) = http_async("GET", &url("/readyz"), tok, None).await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["not_ready"], serde_json::json!(["ghost"]), "{body}");

    let (status, body) = http_async("GET", &url("/peers"), tok, None).await;
    assert_eq!(status, 200);
    let peers: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "ghost"]);
    for field in [
        "name",
        "id",
        "addr",
        "state",
        "connections",
        "dial_attempts",
        "next_retry_in",
        "streams_opened",
        "stream_open_failures",
    ] {
        assert!(
            peers[0].get(field).is_some(),
            "missing {field} in {}",
            peers[0]
        );
    }
    let conn = &peers[0]["connections"][0];
    for field in [
        "number",
        "direction",
        "remote_addr",
        "opened_at",
        "active_streams",
        "rtt_seconds",
        "bytes_sent",
        "bytes_received",
        "lost_packets",
    ] {
        assert!(conn.get(field).is_some(), "missing {field} in {conn}");
    }

    let (status, body) = http_async("GET", &url("/metrics"), tok, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("peerpool_build_info"), "{body}");

    // POST /peers.
    let new_id = Identity::generate().unwrap().id;
    let body = format!(r#"{{"name":"c","id":"{new_id}","addr":"127.0.0.1:9"}}"#);
    let (status, resp) = http_async("POST", &url("/peers"), tok, Some(&body)).await;
    assert_eq!(status, 201, "{resp}");
    assert_eq!(
        http_async("POST", &url("/peers"), tok, Some(&body)).await.0,
        409
    );
    let same_id = format!(r#"{{"name":"d","id":"{new_id}"}}"#);
    assert_eq!(
        http_async("POST", &url("/peers"), tok, Some(&same_id))
            .await
            .0,
        409
    );
    for (bad, why) in [
        (r#"{"name":"e","id":"xyz"}"#.to_string(), "bad id"),
        (
            format!(
                r#"{{"name":"Bad Name","id":"{}"}}"#,
                Identity::generate().unwrap().id
            ),
            "bad name",
        ),
        (r#"{"name":"e""#.to_string(), "malformed JSON"),
        (
            format!(
                r#"{{"name":"e","id":"{}","port":1}}"#,
                Identity::generate().unwrap().id
            ),
            "unknown field",
        ),
        (
            format!(
                r#"{{"name":"e","id":"{}","addr":"nowhere"}}"#,
                Identity::generate().unwrap().id
            ),
            "bad addr",
        ),
    ] {
        let (status, resp) = http_async("POST", &url("/peers"), tok, Some(&bad)).await;
        assert_eq!(status, 400, "{why}: {resp}");
        assert!(resp.contains("error"), "{why}: {resp}");
    }
    let huge = format!(r#"{{"name":"e","id":"{}"}}"#, "a".repeat(64 * 1024));
    assert_eq!(
        http_async("POST", &url("/peers"), tok, Some(&huge)).await.0,
        413
    );

    // DELETE /peers/{name}.
    assert_eq!(
        http_async("DELETE", &url("/peers/nope"), tok, None).await.0,
        404
    );
    assert_eq!(
        http_async("DELETE", &url("/peers/ghost"), tok, None)
            .await
            .0,
        202
    );
    assert_eq!(
        http_async("DELETE", &url("/peers/c"), tok, None).await.0,
        202
    );
    let pool = node.pool().clone();
    wait_for("ghost and c removed", Duration::from_secs(10), || {
        pool.peer("ghost").is_none() && pool.peer("c").is_none()
    })
    .await;
    let (status, body) = http_async("GET", &url("/readyz"), tok, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http_async("GET", &url("/no/such/route"), tok, None).await.0,
        404
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn without_a_token_the_admin_api_is_open() {
    init_tracing();
    let (node, _a, _) = serving_pair(config(2, Strategy::RoundRobin), vec![]).await;
    let base = format!("http://{}", node.admin_addr());
    assert_eq!(
        http_async("GET", &format!("{base}/peers"), None, None)
            .await
            .0,
        200
    );
    assert_eq!(
        http_async("GET", &format!("{base}/readyz"), None, None)
            .await
            .0,
        200
    );
    node.shutdown().await;
}

/// Opens a stream to b, writes `bytes`, and returns the status byte and the
/// code b stopped our side with.
async fn raw(a: &Pool, b: &peerpool::PeerId, bytes: &[u8]) -> (Option<u8>, Option<u64>) {
    let mut s = a.open_stream(b).await.unwrap();
    let _ = s.send.write_all(bytes).await;
    let mut status = [0u8; 1];
    let got = s.recv.read_exact(&mut status).await.ok().map(|_| status[0]);
    let stopped = tokio::time::timeout(Duration::from_secs(5), s.send.stopped())
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten()
        .map(|c| c.into_inner());
    (got, stopped)
}

#[actix_rt::test]
async fn bad_streams_get_a_status_and_a_stop_and_disturb_nothing() {
    init_tracing();
    let echo = echo_upstream().await;
    let mut cfg = config(2, Strategy::RoundRobin);
    cfg.node.header_timeout = Duration::from_secs_f64(1.0);
    let mut private = ServiceConfig::new("private", echo);
    private.allow = Some(vec!["other".into()]);
    cfg.service = vec![
        ServiceConfig::new("echo", echo),
        ServiceConfig::new("dead", free_tcp()),
        ServiceConfig::new(
            "dead_unix",
            peerpool::config::Address::Unix("/nonexistent/peerpool-test.sock".into()),
        ),
        private,
    ];
    let other = PeerConfig::pinned("other", Identity::generate().unwrap().id, None);
    let (node, a, idb) = serving_pair(cfg, vec![other]).await;
    let idb = idb.id;
    let conns_before: Vec<u64> = a
        .get_connections(Some(&idb))
        .iter()
        .map(|c| c.number)
        .collect();

    // A long-lived good stream runs through all of it.
    let mut good = a.open_stream(&idb).await.unwrap();
    good.send
        .write_all(&header::encode("echo", None).unwrap())
        .await
        .unwrap();
    let mut st = [0u8; 1];
    good.recv.read_exact(&mut st).await.unwrap();
    assert_eq!(st[0], Status::Ok as u8);

    let mut version3 = header::encode("echo", None).unwrap();
    version3[2] = 3;
    let cases: Vec<(&str, Vec<u8>, Status)> = vec![
        (
            "unknown service",
            header::encode("nope", None).unwrap(),
            Status::UnknownService,
        ),
        (
            "dead upstream",
            header::encode("dead", None).unwrap(),
            Status::UpstreamUnreachable,
        ),
        (
            "dead unix upstream",
            header::encode("dead_unix", None).unwrap(),
            Status::UpstreamUnreachable,
        ),
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Status::Malformed,
        ),
        ("oversized", b"PS\x01\xff\xff".to_vec(), Status::TooLarge),
        (
            "a peer the service does not allow",
            header::encode("private", None).unwrap(),
            Status::Forbidden,
        ),
        ("bad version", version3, Status::UnsupportedVersion),
        (
            "not utf-8",
            b"PS\x01\x00\x02\xff\xfe".to_vec(),
            Status::Malformed,
        ),
    ];
    for (what, bytes, want) in cases {
        let (status, stopped) = raw(&a, &idb, &bytes).await;
        assert_eq!(status, Some(want as u8), "{what}: status");
        assert_eq!(stopped, Some(want as u64), "{what}: stop code");
        // The good stream still echoes.
        good.send.write_all(what.as_bytes()).await.unwrap();
        let mut back = vec![0u8; what.len()];
        good.recv.read_exact(&mut back).await.unwrap();
        assert_eq!(back, what.as_bytes());
    }

    // A header sent one byte per second times out after header_timeout.
    let started = Instant::now();
    let mut slow = a.open_stream(&idb).await.unwrap();
    let head = header::encode("echo", None).unwrap();
    let writer = tokio::spawn(async move {
        for b in head {
            if slow.send.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        slow
    });
    let mut slow = writer.await.unwrap();
    let mut status = [0u8; 1];
    slow.recv.read_exact(&mut status).await.unwrap();
    assert_eq!(status[0], Status::HeaderTimeout as u8);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // Nothing else was disturbed: same connections, the good stream works.
    good.send.write_all(b"still here").await.unwrap();
    good.send.finish().unwrap();
    let mut rest = Vec::new();
    good.recv.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"still here");
    let conns_after: Vec<u64> = a
        .get_connections(Some(&idb))
        .iter()
        .map(|c| c.number)
        .collect();
    assert_eq!(conns_before, conns_after);
    node.shutdown().await;
}
