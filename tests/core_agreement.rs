//! A peer's state is derived, in one place: after every event of a scripted
//! sequence (dials from both ends and the retire they cause, a closed
//! connection and its redial, a panicking actor, a drain), what the peer
//! actor's `PeerCore` holds, the routing table it published (`Pool::peer`),
//! `GET /peers` and `GET /metrics` all say the same thing.
//! (nextest runs each test in its own process, so the recorder starts empty.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerpool::{CoreView, PeerId, PeerState, PeerStatus, Pool, Strategy};
use peerpool_testkit::prelude::*;

const LIMIT: Duration = Duration::from_secs(10);

/// What every view says about one peer, read while the core did not change.
/// Both pools live in this process and share its metrics: the peer-count
/// gauges add up both, so the other pool's core is read alongside.
struct Views {
    core: CoreView,
    other: Option<CoreView>,
    published: PeerStatus,
    admin: PeerStatus,
    metrics: String,
}

/// The facts of a core that only events change (not the passing of time).
fn stable(c: &CoreView) -> impl PartialEq + std::fmt::Debug {
    (
        c.state,
        c.usable.clone(),
        c.retiring.clone(),
        c.by_direction,
        c.dial_attempts,
        c.backoff,
    )
}

/// The other pool of the process and its peer.
struct Other<'a> {
    pool: &'a Pool,
    peer: PeerId,
}

async fn views(
    pool: &Pool,
    admin: SocketAddr,
    peer: &PeerId,
    name: &str,
    other: &Other<'_>,
) -> Views {
    let deadline = Instant::now() + LIMIT;
    loop {
        let other_before = other.pool.inspect_core(&other.peer).await.ok();
        let before = pool
            .inspect_core(peer)
            .await
            .expect("the peer's actor answers");
        let published = pool.peer(name).expect("the peer is registered");
        let (status, body) = http_async("GET", &format!("http://{admin}/peers"), None, None).await;
        assert_eq!(status, 200, "{body}");
        let listed: Vec<PeerStatus> = serde_json::from_str(&body).expect("/peers is typed JSON");
        let (_, metrics) = http_async("GET", &format!("http://{admin}/metrics"), None, None).await;
        let after = pool
            .inspect_core(peer)
            .await
            .expect("the peer's actor answers");
        let other_after = other.pool.inspect_core(&other.peer).await.ok();
        if stable(&before) == stable(&after)
            && other_before.as_ref().map(stable) == other_after.as_ref().map(stable)
        {
            let admin = listed
                .into_iter()
                .find(|p| p.name == name)
                .expect("/peers lists the peer");
            return Views {
                core: after,
                other: other_after,
                published,
                admin,
                metrics,
            };
        }
        // An event landed between the reads: read again.
        assert!(Instant::now() < deadline, "the core never held still");
    }
}

fn numbers(p: &PeerStatus, usable: bool) -> Vec<u64> {
    let mut v: Vec<u64> = p
        .connections
        .iter()
        .filter(|c| c.usable == usable)
        .map(|c| c.number)
        .collect();
    v.sort_unstable();
    v
}

/// Everything published about `name` agrees with its core; returns the core.
async fn agree(
    pool: &Pool,
    admin: SocketAddr,
    peer: &PeerId,
    name: &str,
    other: &Other<'_>,
    event: &str,
) -> CoreView {
    let v = views(pool, admin, peer, name, other).await;
    let core = &v.core;
    for (what, p) in [("published table", &v.published), ("/peers", &v.admin)] {
        let ctx = format!("after {event}: {what} vs core {core:?}");
        assert_eq!(p.state, core.state, "{ctx}");
        assert_eq!(numbers(p, true), core.usable, "{ctx}");
        assert_eq!(numbers(p, false), core.retiring, "{ctx}");
        assert_eq!(p.dial_attempts, core.dial_attempts, "{ctx}");
        assert_eq!(p.backoff_seconds, core.backoff.as_secs_f64(), "{ctx}");
        assert_eq!(
            p.next_retry_in.is_some(),
            core.next_retry_in.is_some(),
            "{ctx}"
        );
        for (d, n) in core.by_direction {
            let held = p.connections.iter().filter(|c| c.direction == d).count();
            assert_eq!(held, n, "{ctx}: {d:?} connections");
        }
    }
    let ctx = format!("after {event}: /metrics vs core {core:?}");
    let gauge = |name: &str, labels: &[(&str, &str)]| metric(&v.metrics, name, labels);
    for s in PeerState::ALL {
        let expected = if s == core.state { 1.0 } else { 0.0 };
        let labels = [("peer", name), ("state", s.as_str())];
        assert_eq!(
            gauge("peerpool_peer_state", &labels).unwrap_or(0.0),
            expected,
            "{ctx}: peer_state {s}"
        );
        let others = v
            .other
            .as_ref()
            .filter(|o| o.state == s)
            .map_or(0.0, |_| 1.0);
        assert_eq!(
            gauge("peerpool_peers", &[("state", s.as_str())]).unwrap_or(0.0),
            expected + others,
            "{ctx}: peers {s} (the other pool's peer: {:?})",
            v.other
        );
    }
    for (d, n) in core.by_direction {
        let labels = [("peer", name), ("direction", d.as_str())];
        assert_eq!(
            gauge("peerpool_connections", &labels),
            Some(n as f64),
            "{ctx}: connections {d:?}"
        );
    }
    v.core
}

fn held(core: &CoreView) -> usize {
    core.usable.len() + core.retiring.len()
}

#[actix_rt::test]
async fn published_routes_peers_and_metrics_agree_with_the_core_after_every_event() {
    init_tracing();
    let handle = peerpool::metrics::install();
    let mut cfg = config(3, Strategy::RoundRobin);
    cfg.retry.initial_delay = Duration::from_millis(50);
    // Both ends dial: once the other answers, each dials its other slots,
    // so the pair may hold more than N and retire the excess through
    // RETIRE/DONE; connections over N may also be refused at admission
    // instead. Pairs are made until one retired a connection.
    let mut attempt = 0;
    let (a, b, admin, _server, name) = loop {
        attempt += 1;
        assert!(
            attempt <= 30,
            "30 pairs dialled each other without a retire"
        );
        let name = format!("b{attempt}");
        let (a, b) = pair_named(&cfg, (&format!("a{attempt}"), &name), true, true);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = listener.local_addr().unwrap();
        let server = peerpool::sidecar::admin::start(
            listener,
            a.pool.clone(),
            handle.clone(),
            String::new(),
        )
        .unwrap();
        let other = Other {
            pool: &b.pool,
            peer: a.identity.id,
        };
        // 1. The first dials: sample until the pair settles on N.
        let mut saw = Vec::new();
        let started = Instant::now();
        loop {
            let core = agree(
                &a.pool,
                admin,
                &b.identity.id,
                &name,
                &other,
                "the first dials",
            )
            .await;
            if !saw.contains(&core.state) {
                saw.push(core.state);
            }
            if core.state == PeerState::Healthy && held(&core) == 3 && core.retiring.is_empty() {
                break;
            }
            assert!(started.elapsed() < LIMIT, "never settled: {core:?}");
        }
        let (_, text) = http_async("GET", &format!("http://{admin}/metrics"), None, None).await;
        let closed = |reason| {
            metric(
                &text,
                "peerpool_connection_closed_total",
                &[("peer", name.as_str()), ("reason", reason)],
            )
            .unwrap_or(0.0)
        };
        let retired = closed("excess") + closed("local");
        println!("pair {attempt}: states seen while dialling {saw:?}, {retired} retired");
        if retired >= 1.0 {
            break (a, b, admin, server, name);
        }
        a.pool.shutdown(Duration::from_secs(1)).await;
        b.pool.shutdown(Duration::from_secs(1)).await;
        server.stop(false).await;
    };
    let idb = b.identity.id;
    let other = Other {
        pool: &b.pool,
        peer: a.identity.id,
    };

    // 2. A connection closes: right after, and until the redial is in.
    let victim = a.pool.get_connections(Some(&idb))[0].number;
    assert!(a.pool.close_connection(victim));
    let started = Instant::now();
    loop {
        let core = agree(&a.pool, admin, &idb, &name, &other, "a closed connection").await;
        if !core.usable.contains(&victim) && core.state == PeerState::Healthy {
            break;
        }
        assert!(started.elapsed() < LIMIT, "no redial: {core:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 3. The peer's actor panics: its successor starts from an empty core
    //    and dials again; the dial count carries over.
    let before = agree(&a.pool, admin, &idb, &name, &other, "the redial").await;
    a.pool.inject_actor_panic(&idb).await.unwrap();
    let started = Instant::now();
    loop {
        // The restarted actor may not be answering yet.
        if let Ok(core) = a.pool.inspect_core(&idb).await {
            if core.state == PeerState::Healthy && core.usable.len() == 3 {
                let core = agree(&a.pool, admin, &idb, &name, &other, "the actor restart").await;
                assert!(core.dial_attempts >= before.dial_attempts, "{core:?}");
                assert!(
                    core.usable.iter().all(|k| !before.usable.contains(k)),
                    "the restarted actor kept old connections: {before:?} -> {core:?}"
                );
                break;
            }
        }
        assert!(started.elapsed() < LIMIT, "the actor did not come back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 4. The drain: a long-lived stream holds it open, so the draining state
    //    is seen, published and counted before the peer goes.
    let mut held_stream = a.pool.open_stream(&idb).await.unwrap();
    use tokio::io::AsyncWriteExt;
    held_stream.send.write_all(b"held").await.unwrap();
    let pool = a.pool.clone();
    let removing = name.clone();
    let removal = actix_rt::spawn(async move { pool.remove_peer(&removing).await });
    let started = Instant::now();
    loop {
        let core = agree(&a.pool, admin, &idb, &name, &other, "the drain began").await;
        if core.state == PeerState::Draining {
            assert_eq!(held(&core), 3, "connections stay until the stream ends");
            assert!(
                a.pool.open_stream(&idb).await.is_err(),
                "a draining peer takes no new stream"
            );
            break;
        }
        assert!(started.elapsed() < LIMIT, "never draining: {core:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(held_stream);
    removal.await.unwrap().unwrap();
    // Gone everywhere: no core, no table, not listed, in no state.
    assert!(a.pool.inspect_core(&idb).await.is_err());
    assert!(a.pool.peer(&name).is_none());
    let (_, body) = http_async("GET", &format!("http://{admin}/peers"), None, None).await;
    assert_eq!(body, "[]");
    let (_, text) = http_async("GET", &format!("http://{admin}/metrics"), None, None).await;
    // Only b's peer "a" is left in the process.
    let b_view = b.pool.inspect_core(&a.identity.id).await.unwrap();
    for s in PeerState::ALL {
        let expected = if s == b_view.state { 1.0 } else { 0.0 };
        assert_eq!(
            metric(&text, "peerpool_peers", &[("state", s.as_str())]).unwrap_or(0.0),
            expected,
            "{s}"
        );
    }
    assert_eq!(
        metric(&text, "peerpool_connections", &[("peer", name.as_str())]),
        Some(0.0),
        "the removed peer's connection gauges read 0 until they expire"
    );
}
