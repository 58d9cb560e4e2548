//! The GOAWAY an HTTP/2 connection gets when its process starts draining.
//!
//! HTTP/1.1 responses carry `Connection: close` during a drain ([`crate::drain`]). HTTP/2 has
//! no such header; its way is a GOAWAY frame, and actix-http 3.20 sends none on a graceful
//! stop, so a busy h2 connection would stay on the old generation until hammer time and have
//! its open streams cut. [`GoAway`] sits between rustls and actix-http's HTTP/2 server, on
//! the decrypted stream of a TLS connection that negotiated `h2`, and follows the frames the
//! server writes (each a 9-byte header holding the payload length, then the payload). Once
//! the drain signal fires (after the acceptor paused, as for WebSockets and SSE, so that the
//! client's next connection reaches the new generation) it writes one GOAWAY frame between
//! two of the server's frames: last stream id 2^31-1, `NO_ERROR`, the first step of a
//! graceful shutdown in RFC 9113 §6.8. The client opens no new stream on the connection, the
//! streams it already opened are answered as usual, and it then closes the connection and
//! sends its next requests on a new one.
//!
//! An idle connection gets its GOAWAY too: the wrapper registers its task with the drain
//! signal on its first read, and writes the frame from the read side when woken.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::draining::{self, Draining};

/// Length of an HTTP/2 frame header.
const HEADER_LEN: usize = 9;

/// GOAWAY, stream 0, no flags; last stream id 2^31-1 (every stream the client opened before
/// it reads this is still answered), error code `NO_ERROR`.
const GOAWAY_FRAME: [u8; HEADER_LEN + 8] = [
    0, 0, 8,   // payload length
    0x7, // type: GOAWAY
    0,   // flags
    0, 0, 0, 0, // stream 0
    0x7f, 0xff, 0xff, 0xff, // last stream id
    0, 0, 0, 0, // NO_ERROR
];

/// Where the bytes written so far end in the server's stream of HTTP/2 frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FrameCursor {
    /// Bytes of the current frame's header seen so far (0 between frames and in a payload).
    header: [u8; HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// Frames written completely.
    frames: u64,
}

impl FrameCursor {
    /// Between two frames: a frame of ours may be written now.
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Takes in `bytes` written by the server, in order.
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = &bytes[self.step(bytes)..];
        }
    }

    /// Takes in the start of `bytes`, up to the end of the current header or payload;
    /// returns how many bytes it took (at least one).
    fn step(&mut self, bytes: &[u8]) -> usize {
        if self.payload_left > 0 {
            let n = self.payload_left.min(bytes.len());
            self.payload_left -= n;
            if self.payload_left == 0 {
                self.frames += 1;
            }
            return n;
        }
        let n = (HEADER_LEN - self.have).min(bytes.len());
        self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        if self.have == HEADER_LEN {
            self.have = 0;
            self.payload_left = usize::from(self.header[0]) << 16
                | usize::from(self.header[1]) << 8
                | usize::from(self.header[2]);
            if self.payload_left == 0 {
                self.frames += 1;
            }
        }
        n
    }

    /// How many bytes at the start of `bytes` end the frame in progress, or the next frame
    /// when between two (all of them if they do not get that far).
    fn frame_end(&self, bytes: &[u8]) -> usize {
        let mut probe = *self;
        let mut taken = 0;
        while taken < bytes.len() {
            taken += probe.step(&bytes[taken..]);
            if probe.at_boundary() {
                break;
            }
        }
        taken
    }
}

/// What a connection's GOAWAY is waiting for.
#[derive(Debug)]
enum Phase {
    /// Not HTTP/2: nothing to do.
    Off,
    /// Serving; the drain signal, and whether the connection's task waits for it (registered
    /// once, on the first read: the task, and so its waker, stays the same for the whole
    /// connection, and afterwards a lock-free flag is enough).
    Serving(Draining, bool),
    /// Draining: the frame's bytes not yet written (all of them until a frame boundary).
    Due { written: usize },
    /// Written, maybe not flushed yet.
    Sent { flushed: bool },
}

/// A connection's stream with a GOAWAY written into it when this process starts draining
/// (HTTP/2 only; other connections pass through untouched). See the module documentation.
#[derive(Debug)]
pub struct GoAway<T> {
    io: T,
    cursor: FrameCursor,
    phase: Phase,
}

impl<T> GoAway<T> {
    /// Wraps the stream of a connection; `http2`: whether it speaks HTTP/2.
    pub(crate) fn new(io: T, http2: bool) -> Self {
        GoAway {
            io,
            cursor: FrameCursor::default(),
            phase: if http2 {
                Phase::Serving(draining::draining(), false)
            } else {
                Phase::Off
            },
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> GoAway<T> {
    /// Moves from serving to due once the drain began; registers the task with the drain
    /// signal the first time it is given one.
    fn check_drain(&mut self, cx: Option<&mut Context<'_>>) {
        if let Phase::Serving(signal, registered) = &mut self.phase {
            let fired = match cx {
                Some(cx) if !*registered => {
                    *registered = true;
                    Pin::new(signal).poll(cx).is_ready()
                }
                _ => draining::now(),
            };
            if fired {
                self.phase = Phase::Due { written: 0 };
            }
        }
    }

    /// Writes what is due of the GOAWAY frame if the server's stream is between two frames
    /// (after its first frame, the SETTINGS that must open it), and flushes it once written.
    /// `Ready(Ok)` when nothing of ours waits to be written.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.phase {
                Phase::Due { written } => {
                    if written == 0 && (self.cursor.frames == 0 || !self.cursor.at_boundary()) {
                        return Poll::Ready(Ok(()));
                    }
                    let n =
                        ready!(Pin::new(&mut self.io).poll_write(cx, &GOAWAY_FRAME[written..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.phase = if written + n == GOAWAY_FRAME.len() {
                        log::debug!("HTTP/2 connection: GOAWAY written (draining)");
                        Phase::Sent { flushed: false }
                    } else {
                        Phase::Due {
                            written: written + n,
                        }
                    };
                }
                Phase::Sent { flushed: false } => {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    self.phase = Phase::Sent { flushed: true };
                }
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for GoAway<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !matches!(this.phase, Phase::Off | Phase::Sent { flushed: true }) {
            // An idle connection is woken here by the drain signal: the server writes nothing
            // that would carry the frame. Errors surface on the server's next write.
            this.check_drain(Some(cx));
            let _ = this.poll_goaway(cx);
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GoAway<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Off | Phase::Sent { .. }) {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        this.check_drain(None);
        ready!(this.poll_goaway(cx))?;
        // Still due (inside a frame, or before the first one): write no further than the end
        // of that frame, so that ours can follow it.
        let limit = match this.phase {
            Phase::Due { .. } => this.cursor.frame_end(buf),
            _ => buf.len(),
        };
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..limit]))?;
        this.cursor.advance(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Phase::Sent { flushed: false } = this.phase {
            this.phase = Phase::Sent { flushed: true };
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
