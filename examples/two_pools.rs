//! Two pools in one process: `a` keeps 3 QUIC connections to `b` and opens
//! streams over them round robin; `b` echoes every stream back.
//!
//! Run with `cargo run --example two_pools`.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use peerpool::config::{Config, PeerConfig};
use peerpool::identity::Identity;
use peerpool::{IncomingStream, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (id_a, id_b) = (Identity::generate()?, Identity::generate()?);
    let (sock_a, sock_b) = (
        UdpSocket::bind("127.0.0.1:0")?,
        UdpSocket::bind("127.0.0.1:0")?,
    );
    let addr_b = sock_b.local_addr()?;

    let mut config_a = Config::default();
    config_a.pool.max_connections_per_peer = 3;
    config_a
        .peers
        .push(PeerConfig::pinned("b", id_b.id, Some(addr_b)));
    let mut config_b = Config::default();
    // b only accepts from a: it has no address for it.
    config_b.peers.push(PeerConfig::pinned("a", id_a.id, None));

    // b echoes whatever a stream carries.
    let echo = Arc::new(|mut s: IncomingStream| async move {
        let mut data = Vec::new();
        if s.recv.read_to_end(&mut data).await.is_ok() {
            let _ = s.send.write_all(&data).await;
            let _ = s.send.shutdown().await;
        }
    });
    let nothing = Arc::new(|_s: IncomingStream| async {});
    let a = Pool::start_with_socket(config_a, id_a, nothing, sock_a)?;
    let _b = Pool::start_with_socket(config_b, id_b.clone(), echo, sock_b)?;

    let conns = a.dial_peer(&id_b.id).await?;
    println!("a holds {} connections to b:", conns.len());
    for c in &conns {
        println!(
            "  #{} {:?} to {} rtt {:.3} ms",
            c.number,
            c.direction,
            c.remote_addr,
            c.rtt_seconds * 1e3
        );
    }

    for i in 0..6 {
        let mut s = a.open_stream(&id_b.id).await?;
        s.send.write_all(format!("hello {i}").as_bytes()).await?;
        s.send.finish()?;
        let mut back = Vec::new();
        s.recv.read_to_end(&mut back).await?;
        println!(
            "stream {i} on connection #{}: {:?}",
            s.connection,
            String::from_utf8_lossy(&back)
        );
    }

    for peer in a.peers() {
        println!(
            "peer {} is {} with {} connections, {} streams opened",
            peer.name,
            peer.state,
            peer.connections.len(),
            peer.streams_opened
        );
    }
    a.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
