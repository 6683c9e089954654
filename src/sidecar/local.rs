//! The local side of a transfer: the application's connection to a
//! forward, or a service's connection to its upstream, over TCP or a Unix
//! stream socket ([`Address`]).
//!
//! - No false FIN over TCP: every TCP socket is armed (`SO_LINGER` 0) as
//!   soon as it exists, and its write half ([`WriteHalf`]) sends a FIN only
//!   through [`WriteHalf::finish`], which disarms first. Any other end (a
//!   failed pipe, an aborted task, the process killed) closes with RST.
//! - A Unix socket has no reset: its peer sees any close as an end of
//!   stream (unless unread bytes were left behind, which Linux reports as
//!   `ECONNRESET`). The README says so; applications that take the end of a
//!   connection for the end of an answer should use TCP.
//! - A Unix listener's socket file is created with mode 0660 before the
//!   socket listens, replaces a stale file nobody listens on, and is
//!   removed when the forward stops ([`SocketFile`]), unless another
//!   process has put its own socket at the path meanwhile.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

use super::header::ClientAddrs;
use crate::config::Address;

/// The mode of a forward's socket file: the node's user and group may
/// connect, nobody else.
pub const SOCKET_FILE_MODE: u32 = 0o660;

/// Connections waiting for an accept on a Unix listener.
const UNIX_BACKLOG: i32 = 1024;

/// A connected local socket.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to an upstream and prepares the socket ([`Stream::prepare`]).
    pub(crate) async fn connect(to: &Address) -> io::Result<Stream> {
        let s = match to {
            Address::Tcp(a) => Stream::Tcp(TcpStream::connect(a).await?),
            Address::Unix(p) => Stream::Unix(UnixStream::connect(p).await?),
        };
        s.prepare();
        Ok(s)
    }

    /// Arms a fresh TCP socket (RST unless finished) and turns Nagle off:
    /// the pipes write whole chunks.
    fn prepare(&self) {
        if let Stream::Tcp(t) = self {
            arm(t);
            let _ = t.set_nodelay(true);
        }
    }

    /// The client's and the listener's addresses, for the stream header;
    /// a Unix socket has none an upstream could use.
    pub(crate) fn client_addrs(&self) -> Option<ClientAddrs> {
        match self {
            Stream::Tcp(t) => match (t.peer_addr(), t.local_addr()) {
                (Ok(s), Ok(d)) => Some(ClientAddrs::of(s, d)),
                _ => None,
            },
            Stream::Unix(_) => None,
        }
    }

    pub(crate) fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(t) => {
                let (r, w) = t.into_split();
                (ReadHalf::Tcp(r), WriteHalf(Some(Write::Tcp(w))))
            }
            Stream::Unix(u) => {
                let (r, w) = u.into_split();
                (ReadHalf::Unix(r), WriteHalf(Some(Write::Unix(w))))
            }
        }
    }

    /// Closes at once: RST over TCP, a plain close over a Unix socket.
    pub(crate) fn abort(self) {
        match self {
            Stream::Tcp(t) => {
                arm(&t);
                drop(t);
            }
            Stream::Unix(u) => drop(u),
        }
    }
}

fn arm(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// The read half of a [`Stream`].
pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

impl ReadHalf {
    /// Resolves once a read would not wait (bytes, an end or an error).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            ReadHalf::Tcp(r) => r.readable().await,
            ReadHalf::Unix(r) => r.readable().await,
        }
    }

    /// Resolves once the socket reports an error (a reset, above all),
    /// whether or not anyone reads it: a pipe whose bytes wait for QUIC
    /// flow control is not reading, and must still see the client go.
    pub(crate) async fn failed(&self) {
        let interest = tokio::io::Interest::ERROR;
        // An error asking for readiness means the socket is unusable too.
        let _ = match self {
            ReadHalf::Tcp(r) => r.ready(interest).await,
            ReadHalf::Unix(r) => r.ready(interest).await,
        };
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Unix(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

enum Write {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

impl AsyncWrite for Write {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Write::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Write::Unix(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Write::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Write::Unix(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Write::Tcp(w) => Pin::new(w).poll_flush(cx),
            Write::Unix(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Write::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Write::Unix(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The write half of a [`Stream`]. Dropping it sends nothing (tokio's
/// halves would send a FIN): the socket closes when its read half goes
/// too, with RST over TCP.
pub(crate) struct WriteHalf(Option<Write>);

impl WriteHalf {
    fn inner(&mut self) -> io::Result<&mut Write> {
        self.0
            .as_mut()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    pub(crate) async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner()?.write_all(buf).await
    }

    /// One gathered write; returns the bytes written.
    pub(crate) async fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner()?.write_vectored(bufs).await
    }

    /// The orderly end: disarm, then FIN after everything written.
    pub(crate) async fn finish(&mut self) -> io::Result<()> {
        let w = self.inner()?;
        if let Write::Tcp(t) = w {
            socket2::SockRef::from(t.as_ref()).set_linger(None)?;
        }
        w.shutdown().await
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        match self.0.take() {
            Some(Write::Tcp(w)) => w.forget(),
            Some(Write::Unix(w)) => w.forget(),
            None => {}
        }
    }
}

/// Closes a split connection at once (see [`Stream::abort`]).
pub(crate) fn reset(r: ReadHalf, mut w: WriteHalf) {
    let joined = match (r, w.0.take()) {
        (ReadHalf::Tcp(r), Some(Write::Tcp(w))) => r.reunite(w).ok().map(Stream::Tcp),
        (ReadHalf::Unix(r), Some(Write::Unix(w))) => r.reunite(w).ok().map(Stream::Unix),
        // Halves of different sockets cannot come from one split.
        _ => None,
    };
    if let Some(s) = joined {
        s.abort();
    }
}

/// A bound forward listener, not yet serving.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix {
        listener: std::os::unix::net::UnixListener,
        file: SocketFile,
    },
}

impl From<std::net::TcpListener> for Listener {
    fn from(l: std::net::TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl Listener {
    /// Binds `addr`. A Unix socket file left by a process that is gone
    /// (nothing accepts on it) is replaced; one somebody listens on, or a
    /// file that is no socket, is an error.
    pub fn bind(addr: &Address) -> io::Result<Listener> {
        match addr {
            Address::Tcp(a) => Ok(Listener::Tcp(std::net::TcpListener::bind(a)?)),
            Address::Unix(path) => bind_unix(path),
        }
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> io::Result<Address> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(Address::Tcp),
            Listener::Unix { file, .. } => Ok(Address::Unix(file.path.clone())),
        }
    }

    /// Registers the socket with the current runtime; the socket file
    /// comes back to be kept for as long as the listener serves.
    pub(crate) fn serve(self) -> io::Result<(Accept, Option<SocketFile>)> {
        match self {
            Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                Ok((Accept::Tcp(tokio::net::TcpListener::from_std(l)?), None))
            }
            Listener::Unix { listener, file } => {
                listener.set_nonblocking(true)?;
                let l = tokio::net::UnixListener::from_std(listener)?;
                Ok((Accept::Unix(l), Some(file)))
            }
        }
    }
}

fn bind_unix(path: &Path) -> io::Result<Listener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; remove it or choose another path",
            ))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process accepts connections on this socket",
                ))
            }
            // Left behind by a process that died: nobody accepts on it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) => return Err(e),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    // Between bind and listen nobody can connect: the mode is right before
    // the first client could use it.
    // From here on a failure removes the file again.
    let mut file = SocketFile::of(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_FILE_MODE))?;
    // The chmod changed the file's ctime.
    file.refresh()?;
    socket.listen(UNIX_BACKLOG)?;
    Ok(Listener::Unix {
        listener: socket.into(),
        file,
    })
}

/// A forward's socket file, removed when this is dropped, if the file at
/// the path is still the one this node created (a successor that bound the
/// path in the meantime keeps its own).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Which file it is: a file made after ours was removed may reuse its
    /// inode number at once, but not its creation time too.
    identity: (u64, u64, i64, i64),
}

fn identity(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl SocketFile {
    fn of(path: &Path) -> io::Result<SocketFile> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            identity: identity(&m),
        })
    }

    /// Takes the file's identity again, after a change of ours to it (a
    /// chmod changes its ctime).
    fn refresh(&mut self) -> io::Result<()> {
        self.identity = identity(&std::fs::symlink_metadata(&self.path)?);
        Ok(())
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| identity(&m) == self.identity);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the forward's socket file");
            }
        }
    }
}

/// A listener registered with the runtime.
pub(crate) enum Accept {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Accept {
    /// The next client, prepared ([`Stream::prepare`]).
    pub(crate) async fn accept(&self) -> io::Result<Stream> {
        let s = match self {
            Accept::Tcp(l) => Stream::Tcp(l.accept().await?.0),
            Accept::Unix(l) => Stream::Unix(l.accept().await?.0),
        };
        s.prepare();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(path: &Path) -> Address {
        Address::Unix(path.to_path_buf())
    }

    #[test]
    fn a_unix_listener_has_mode_0660_replaces_only_a_stale_file_and_removes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sock");

        let first = Listener::bind(&unix(&path)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_FILE_MODE, "{mode:o}");
        assert_eq!(first.local_addr().unwrap(), unix(&path));
        // Somebody listens: refused, and the file stays.
        let e = Listener::bind(&unix(&path)).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(path.exists());

        // A file left by a dead process (its socket closed, no removal).
        let Listener::Unix { listener, file } = first else {
            unreachable!()
        };
        std::mem::forget(file);
        drop(listener);
        assert!(path.exists());
        let second = Listener::bind(&unix(&path)).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();

        // A successor replaced the file: the old owner leaves it alone.
        let Listener::Unix { listener, file } = second else {
            unreachable!()
        };
        drop(listener);
        let third = Listener::bind(&unix(&path)).unwrap();
        drop(file);
        assert!(path.exists(), "the successor's socket file was removed");
        drop(third);
        assert!(!path.exists(), "the socket file was left behind");

        // Not a socket: refused, the file untouched.
        std::fs::write(&path, b"data").unwrap();
        let e = Listener::bind(&unix(&path)).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
