//! `/metrics` after a scripted sequence of pool events, with exact values.
//! (nextest runs each test in its own process, so the recorder starts empty.)

use std::time::Duration;

use peerpool::config::PeerConfig;
use peerpool::identity::Identity;
use peerpool::pool::{PeerState, Strategy};
use peerpool::Pool;
use peerpool_testkit::prelude::*;

const LIMIT: Duration = Duration::from_secs(10);

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{text}"))
}

#[actix_rt::test]
async fn exact_counts_after_a_scripted_sequence() {
    init_tracing();
    let handle = peerpool::metrics::install();
    let mut cfg = config(1, Strategy::RoundRobin);
    cfg.pool.connection_timeout = Duration::from_secs_f64(0.3);
    cfg.retry.max_retries = 1;
    cfg.retry.max_delay = Duration::from_secs_f64(60.0);
    cfg.retry.initial_delay = Duration::from_secs_f64(0.05);

    let (ida, idb) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (sa, sb) = (udp(), udp());
    let b_addr = sb.local_addr().unwrap();
    let dead = free_udp();
    let idc = Identity::generate().unwrap().id;
    let mut ca = cfg.clone();
    ca.peers = vec![
        PeerConfig::pinned("b", idb.id, Some(b_addr)),
        PeerConfig::pinned("c", idc, Some(dead)),
    ];
    let mut cb = cfg.clone();
    cb.peers = vec![PeerConfig::pinned("a", ida.id, None)];
    let b = Pool::start_with_socket(cb, idb.clone(), echo(), sb).unwrap();
    let a = Pool::start_with_socket(ca, ida.clone(), echo(), sa).unwrap();

    // 1. b connects on its first attempt; c times out twice (1 + 1 retry).
    wait_for("b healthy, c unreachable", LIMIT, || {
        a.peer("b").map(|p| p.state) == Some(PeerState::Healthy)
            && a.peer("c").map(|p| p.state) == Some(PeerState::Unreachable)
    })
    .await;
    // 2. Five streams to b, one refused open to c.
    for i in 0..5u8 {
        assert_eq!(echo_once(&a, &idb.id, &[i; 10]).await.unwrap(), [i; 10]);
    }
    assert!(a.open_stream(&idc).await.is_err());
    // 3. b closes the connection: a counts the close and redials.
    let conn_on_b = b.get_connections(Some(&ida.id))[0].number;
    let first_on_a = a.get_connections(Some(&idb.id))[0].number;
    assert!(b.close_connection(conn_on_b));
    wait_for("a redialled b", LIMIT, || {
        a.get_connections(Some(&idb.id))
            .iter()
            .any(|c| c.usable && c.number != first_on_a)
    })
    .await;
    // 4. a's actor for b panics and is restarted; it dials b again.
    let before: Vec<u64> = a
        .get_connections(Some(&idb.id))
        .iter()
        .map(|c| c.number)
        .collect();
    a.inject_actor_panic(&idb.id).await.unwrap();
    wait_for("a reconnected after the restart", LIMIT, || {
        let now = a.get_connections(Some(&idb.id));
        now.len() == 1 && now[0].usable && !before.contains(&now[0].number)
    })
    .await;
    // Stream counters are set from the pool's atomics on the actor's tick.
    wait_for("stream counters published", LIMIT, || {
        metric(
            &handle.render(),
            "peerpool_streams_opened_total",
            &[("peer", "b"), ("strategy", "round_robin")],
        ) == Some(5.0)
    })
    .await;
    wait_for("the restarted actor's dial counted", LIMIT, || {
        metric(
            &handle.render(),
            "peerpool_dial_attempts_total",
            &[("peer", "b"), ("result", "ok")],
        ) == Some(3.0)
    })
    .await;

    let t = handle.render();
    let b_ = ("peer", "b");
    let c_ = ("peer", "c");
    assert_eq!(
        value(&t, "peerpool_dial_attempts_total", &[b_, ("result", "ok")]),
        3.0
    );
    // Results that never happened have no series (see metrics.rs).
    assert_eq!(
        metric(
            &t,
            "peerpool_dial_attempts_total",
            &[b_, ("result", "timeout")]
        ),
        None
    );
    assert_eq!(
        value(
            &t,
            "peerpool_dial_attempts_total",
            &[c_, ("result", "timeout")]
        ),
        2.0
    );
    assert_eq!(
        value(&t, "peerpool_dial_attempts_total", &[c_, ("result", "ok")]),
        0.0,
        "the first result is created at zero"
    );
    assert_eq!(
        value(
            &t,
            "peerpool_streams_opened_total",
            &[b_, ("strategy", "round_robin")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &t,
            "peerpool_stream_open_failures_total",
            &[c_, ("reason", "unreachable")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            "peerpool_stream_open_failures_total",
            &[b_, ("reason", "timeout")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &t,
            "peerpool_connection_closed_total",
            &[b_, ("reason", "peer_closed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            "peerpool_connection_restarts_total",
            &[b_, ("reason", "peer_closed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            "peerpool_connection_closed_total",
            &[("peer", "a"), ("reason", "local")]
        ),
        1.0
    );
    assert_eq!(
        value(&t, "peerpool_actor_restarts_total", &[("actor", "peer")]),
        1.0
    );
    // The histogram counted every open.
    assert_eq!(
        value(&t, "peerpool_stream_open_duration_seconds_count", &[b_]),
        5.0
    );
    // a: b healthy, c unreachable; b: a healthy.
    assert_eq!(value(&t, "peerpool_peers", &[("state", "healthy")]), 2.0);
    assert_eq!(
        value(&t, "peerpool_peers", &[("state", "unreachable")]),
        1.0
    );
    assert_eq!(value(&t, "peerpool_peers", &[("state", "connecting")]), 0.0);
    assert_eq!(
        value(&t, "peerpool_peer_state", &[c_, ("state", "unreachable")]),
        1.0
    );
    assert_eq!(
        metric(&t, "peerpool_peer_state", &[c_, ("state", "healthy")]),
        None,
        "c was never healthy"
    );
    assert_eq!(
        value(&t, "peerpool_peer_state", &[c_, ("state", "connecting")]),
        0.0,
        "a state left reads 0 until it expires"
    );
    assert_eq!(
        value(&t, "peerpool_connections", &[b_, ("direction", "outbound")]),
        1.0
    );
    assert_eq!(value(&t, "peerpool_connection_target", &[b_]), 1.0);
    assert_eq!(
        value(
            &t,
            "peerpool_active_streams",
            &[b_, ("direction", "outbound")]
        ),
        0.0
    );
    assert_eq!(value(&t, "peerpool_backoff_seconds", &[b_]), 0.0);
    assert!(
        value(&t, "peerpool_backoff_seconds", &[c_]) > 50.0,
        "c waits for its probe"
    );
    assert_eq!(
        value(
            &t,
            "peerpool_handshake_failures_total",
            &[("reason", "wrong_id")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &t,
            "peerpool_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[actix_rt::test]
async fn a_removed_peers_series_disappear() {
    init_tracing();
    let handle = peerpool::metrics::install();
    let (a, b) = pair(&config(1, Strategy::RoundRobin), true, false);
    wait_for("connected", LIMIT, || usable(&a.pool, &b.identity.id) == 1).await;
    assert!(handle.render().contains("peerpool_connections{peer=\"b\""));
    a.pool.remove_peer("b").await.unwrap();
    // Series idle for metrics::IDLE_TIMEOUT are dropped at render time.
    let limit = peerpool::metrics::IDLE_TIMEOUT + Duration::from_secs(5);
    wait_for("b's series gone", limit, || {
        !handle.render().contains("peer=\"b\",") && !handle.render().contains("peer=\"b\"}")
    })
    .await;
    // The live peer's series on the other node stay.
    assert!(handle.render().contains("peerpool_connections{peer=\"a\""));
}
