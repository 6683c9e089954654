//! The client's side of a forwarded connection: its two halves, the
//! bytes kept for a retry on another endpoint, and the stream header that
//! names the service and the client's addresses.

use bytes::Bytes;

use super::header;
use super::local::{self, ReadHalf, Stream, WriteHalf};

/// The client's side of a forwarded connection.
pub(super) struct Client {
    pub(super) r: ReadHalf,
    pub(super) w: WriteHalf,
    /// While `replayable`, every byte the client sent; after, only those
    /// not yet written to the stream.
    pub(super) buf: Vec<u8>,
    pub(super) replayable: bool,
    /// The client sent its FIN (after the bytes in `buf`).
    pub(super) fin: bool,
    /// Bytes written to the stream before `buf` (when not replayable).
    pub(super) flushed: u64,
    /// The stream header: the service and this client's addresses.
    pub(super) head: Bytes,
}

impl Client {
    pub(super) fn new(conn: Stream, service: &str) -> Client {
        // The name was checked when the forward was made.
        let head = header::encode(service, conn.client_addrs())
            .unwrap_or_default()
            .into();
        let (r, w) = conn.split();
        Client {
            head,
            r,
            w,
            buf: Vec::new(),
            replayable: true,
            fin: false,
            flushed: 0,
        }
    }

    pub(super) fn abort(self) {
        local::reset(self.r, self.w);
    }
}
