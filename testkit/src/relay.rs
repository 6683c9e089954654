//! A userland UDP relay for fault injection (no `tc netem` here): node a
//! dials the relay's address, the relay forwards to node b and back, and a
//! mode decides what happens to each datagram. The mode can change while
//! traffic flows.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

/// What the relay does to each datagram, both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Pass,
    /// Drop each datagram with probability p.
    Drop(f64),
    /// Delay each datagram by `ms` ± `jitter_ms` (uniform), so order may change.
    Delay {
        ms: u64,
        jitter_ms: u64,
    },
    /// Send each datagram twice with probability p.
    Duplicate(f64),
    /// Hold every other datagram until the next one has gone.
    Reorder,
    /// Drop with probability `drop`, delay the rest by `ms` ± `jitter_ms`.
    Lossy {
        drop: f64,
        ms: u64,
        jitter_ms: u64,
    },
    /// Drop everything.
    Blackhole,
}

struct State {
    mode: Mode,
    /// The dialling side, learned from the first datagram that is not from
    /// the upstream.
    client: Option<SocketAddr>,
    held: Option<(Vec<u8>, SocketAddr)>,
    forwarded: u64,
    dropped: u64,
}

/// A running relay; stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays datagrams between whoever sends to it and `upstream`.
    pub fn start(upstream: SocketAddr) -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind relay");
        socket.set_nonblocking(true).expect("nonblocking");
        let addr = socket.local_addr().expect("relay addr");
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Pass,
            client: None,
            held: None,
            forwarded: 0,
            dropped: 0,
        }));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            rt.block_on(async move {
                let socket = Arc::new(tokio::net::UdpSocket::from_std(socket).expect("tokio udp"));
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = tokio::select! {
                        r = socket.recv_from(&mut buf) => match r {
                            Ok(x) => x,
                            Err(_) => continue,
                        },
                        _ = &mut stop_rx => return,
                    };
                    let data = buf[..n].to_vec();
                    let (sends, delay) = {
                        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                        let to = if from == upstream {
                            match s.client {
                                Some(c) => c,
                                None => continue,
                            }
                        } else {
                            s.client = Some(from);
                            upstream
                        };
                        plan(&mut s, data, to)
                    };
                    for (data, to) in sends {
                        let socket = socket.clone();
                        match delay {
                            None => {
                                let _ = socket.send_to(&data, to).await;
                            }
                            Some(d) => {
                                tokio::spawn(async move {
                                    tokio::time::sleep(d).await;
                                    let _ = socket.send_to(&data, to).await;
                                });
                            }
                        }
                    }
                }
            });
        });
        Relay {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn set(&self, mode: Mode) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.mode = mode;
        s.held = None;
    }

    /// (forwarded, dropped) datagrams so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.forwarded, s.dropped)
    }
}

type Plan = (Vec<(Vec<u8>, SocketAddr)>, Option<Duration>);

/// What to send for one datagram under the current mode.
fn plan(s: &mut State, data: Vec<u8>, to: SocketAddr) -> Plan {
    let mut rng = rand::rng();
    let out: Plan = match s.mode {
        Mode::Pass => (vec![(data, to)], None),
        Mode::Drop(p) => {
            if rng.random_bool(p.clamp(0.0, 1.0)) {
                (vec![], None)
            } else {
                (vec![(data, to)], None)
            }
        }
        Mode::Delay { ms, jitter_ms } => {
            let lo = ms.saturating_sub(jitter_ms);
            let hi = ms + jitter_ms;
            let d = Duration::from_millis(rng.random_range(lo..=hi));
            (vec![(data, to)], Some(d))
        }
        Mode::Lossy {
            drop,
            ms,
            jitter_ms,
        } => {
            if rng.random_bool(drop.clamp(0.0, 1.0)) {
                (vec![], None)
            } else {
                let lo = ms.saturating_sub(jitter_ms);
                let d = Duration::from_millis(rng.random_range(lo..=ms + jitter_ms));
                (vec![(data, to)], Some(d))
            }
        }
        Mode::Duplicate(p) => {
            if rng.random_bool(p.clamp(0.0, 1.0)) {
                (vec![(data.clone(), to), (data, to)], None)
            } else {
                (vec![(data, to)], None)
            }
        }
        Mode::Reorder => match s.held.take() {
            None => {
                s.held = Some((data, to));
                (vec![], None)
            }
            Some(held) => (vec![(data, to), held], None),
        },
        Mode::Blackhole => (vec![], None),
    };
    if out.0.is_empty() && s.held.is_none() {
        s.dropped += 1;
    }
    s.forwarded += out.0.len() as u64;
    out
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
