//! TCP plumbing of the fake: a listener whose connections a request handler can reset, which is
//! how the `ConnectionReset` fault reaches the client as a transport error instead of a response,
//! and a signal that the listening socket is closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Lets the handler of a request reset the connection it arrived on (axum `ConnectInfo`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnControl(Arc<AtomicBool>);

impl ConnControl {
    /// From now on every read and write fails, so hyper drops the connection without sending
    /// the response; with `SO_LINGER` 0 the close is a TCP reset.
    pub(crate) fn reset(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_reset(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, FakeListener>> for ConnControl {
    fn connect_info(stream: IncomingStream<'_, FakeListener>) -> Self {
        stream.io().control.clone()
    }
}

pub(crate) struct FakeListener {
    inner: TcpListener,
    /// Dropped with the listener: receivers learn the port no longer accepts connections.
    _closed: watch::Sender<()>,
}

impl FakeListener {
    /// Wraps `inner`; the receiver's `changed()` fails once the listener is gone.
    pub(crate) fn new(inner: TcpListener) -> (Self, watch::Receiver<()>) {
        let (closed, closed_rx) = watch::channel(());
        (
            FakeListener {
                inner,
                _closed: closed,
            },
            closed_rx,
        )
    }
}

impl Listener for FakeListener {
    type Io = ResettableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small JSON responses: do not let Nagle add latency to benchmarks.
                    let _ = stream.set_nodelay(true);
                    return (
                        ResettableStream {
                            stream,
                            control: ConnControl::default(),
                        },
                        addr,
                    );
                }
                Err(err) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(%err, "fake API could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that fails all I/O once its [`ConnControl`] is reset.
pub(crate) struct ResettableStream {
    stream: TcpStream,
    control: ConnControl,
}

impl ResettableStream {
    fn reset_error(&self) -> io::Error {
        let _ = self.stream.set_zero_linger();
        io::Error::from(io::ErrorKind::ConnectionReset)
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.control.is_reset() {
            return Poll::Ready(Err(this.reset_error()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.control.is_reset() {
            return Poll::Ready(Err(this.reset_error()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.control.is_reset() {
            return Poll::Ready(Err(this.reset_error()));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.control.is_reset() {
            return Poll::Ready(Err(this.reset_error()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.control.is_reset() {
            return Poll::Ready(Err(this.reset_error()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
