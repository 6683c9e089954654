//! The inbound stream loop: accepts the streams a peer opens on one
//! connection and hands each to the node's stream handler, until the
//! connection closes. While the peer drains here, streams are refused only
//! on connections whose peer did not answer the drain announcement.

use std::sync::Arc;

use super::conn::ConnMeta;
use super::shared::PeerShared;
use super::streams::{IncomingStream, StreamHandler};
use crate::pool::PeerState;
use crate::transport::codes;

pub(crate) async fn serve_inbound(
    meta: Arc<ConnMeta>,
    peer: Arc<PeerShared>,
    handler: Arc<dyn StreamHandler>,
) {
    while let Ok((mut send, mut recv)) = meta.conn.accept_bi().await {
        if peer.state() == PeerState::Draining && meta.refuses_new_streams() {
            let code = quinn::VarInt::from_u32(codes::stream::DRAINING);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            continue;
        }
        let stream = IncomingStream::new(peer.name_arc.clone(), meta.clone(), (send, recv));
        tokio::spawn(handler.handle(stream));
    }
}
