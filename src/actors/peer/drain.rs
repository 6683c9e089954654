//! This node draining the peer (it shuts down, or removes the peer):
//! announced first, so the peer stops routing new streams here before any
//! is refused; then what runs finishes (within `admin.drain_timeout`), then
//! every connection closes. A peer whose configuration is replaced drains
//! its old actor without the announcement: each connection is retired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::PeerActor;
use crate::actors::conn::ConnMeta;
use crate::actors::error::PoolError;
use crate::actors::messages::Drain;
use crate::transport::control::Signal;

/// The longest wait for peers to answer DRAINED before new streams from
/// those that did not are refused.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);

impl Handler<Drain> for PeerActor {
    type Result = ResponseActFuture<Self, Result<(), PoolError>>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        if !self.core.drain() {
            let peer = self.name().to_string();
            return Box::pin(fut::ready(Err(PoolError::Draining { peer })));
        }
        // Published as draining: no new local stream, no new dial.
        self.drive(ctx);
        if !msg.announce {
            return self.retire_all(msg.code, msg.timeout, ctx);
        }
        let metas: Vec<Arc<ConnMeta>> = self
            .core
            .conns()
            .map(|(_, _, c)| {
                c.handle.control.send(Signal::Draining);
                c.handle.meta.clone()
            })
            .collect();
        let Drain { code, timeout, .. } = msg;
        let name = self.name().to_string();
        Box::pin(
            async move {
                let started = Instant::now();
                let answered = async {
                    for m in &metas {
                        m.wait_drained().await;
                    }
                };
                if tokio::time::timeout(ANNOUNCE_WAIT.min(timeout), answered)
                    .await
                    .is_err()
                {
                    tracing::debug!(peer = %name, "not every connection answered the drain announcement");
                }
                for m in &metas {
                    m.refuse_unless_drained();
                }
                let all_idle = async {
                    for m in &metas {
                        m.wait_idle().await;
                    }
                };
                let rest = timeout.saturating_sub(started.elapsed());
                if tokio::time::timeout(rest, all_idle).await.is_err() {
                    tracing::warn!(peer = %name, ?timeout, "drain timed out; closing connections with streams still open");
                }
                for m in &metas {
                    code.close(&m.conn);
                }
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.restart_on_drop = false;
                ctx.stop();
                Ok(())
            }),
        )
    }
}

impl PeerActor {
    /// Drains by retiring every connection through the RETIRE/DONE
    /// handover (another actor of this peer takes over), then stops.
    fn retire_all(
        &mut self,
        code: crate::transport::codes::CloseCode,
        timeout: Duration,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<(), PoolError>> {
        let conns: Vec<(crate::pool::ConnKey, quinn::Connection)> = self
            .core
            .conns()
            .map(|(_, k, c)| (k, c.handle.meta.conn.clone()))
            .collect();
        for (key, _) in &conns {
            self.retire(*key, code, ctx);
        }
        Box::pin(
            async move {
                // Each handover closes its connection within the timeout.
                let closed = async {
                    for (_, c) in &conns {
                        c.closed().await;
                    }
                };
                let _ = tokio::time::timeout(timeout + ANNOUNCE_WAIT, closed).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.restart_on_drop = false;
                ctx.stop();
                Ok(())
            }),
        )
    }
}
