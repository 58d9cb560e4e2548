use std::task::Waker;

use super::*;

/// An in-memory connection: keeps what is written, at most `max_write` bytes per write
/// (0: no limit), and never has anything to read.
#[derive(Default)]
struct Sink {
    out: Vec<u8>,
    max_write: usize,
    flushes: usize,
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = if this.max_write == 0 {
            buf.len()
        } else {
            buf.len().min(this.max_write)
        };
        this.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().flushes += 1;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Sink {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

/// One frame: `len` payload bytes (each the frame's type, so that frames differ).
fn frame(kind: u8, stream: u32, len: usize) -> Vec<u8> {
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend(std::iter::repeat_n(kind, len));
    f
}

/// What a server writes: SETTINGS, then HEADERS and DATA frames of several sizes (one empty).
fn server_frames() -> Vec<Vec<u8>> {
    vec![
        frame(0x4, 0, 18),
        frame(0x1, 1, 30),
        frame(0x0, 1, 0),
        frame(0x0, 1, 16_384),
        frame(0x1, 3, 7),
        frame(0x0, 3, 1_000),
    ]
}

/// Splits `bytes` into frames; panics unless they end exactly on a frame.
fn parse(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(
            bytes.len() >= HEADER_LEN,
            "a partial frame header at the end"
        );
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        assert!(
            bytes.len() >= HEADER_LEN + len,
            "a partial frame at the end"
        );
        frames.push(bytes[..HEADER_LEN + len].to_vec());
        bytes = &bytes[HEADER_LEN + len..];
    }
    frames
}

/// Writes `bytes` through `io` in writes of at most `chunk` bytes, as a server's codec would
/// (it retries the rest of a short write).
fn write_all(io: &mut GoAway<Sink>, bytes: &[u8], chunk: usize) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + chunk).min(bytes.len());
        match Pin::new(&mut *io).poll_write(&mut cx, &bytes[at..end]) {
            Poll::Ready(Ok(n)) => {
                assert!(n > 0, "a write took nothing");
                at += n;
            }
            other => panic!("write returned {other:?}"),
        }
    }
}

/// The global drain state is shared by the tests of this process.
fn with_drain(draining: bool, test: impl FnOnce()) {
    let _lock = crate::draining::TEST_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    crate::draining::set(draining);
    test();
    crate::draining::set(false);
}

#[test]
fn the_cursor_finds_every_frame_end_whatever_the_split() {
    let frames = server_frames();
    let stream: Vec<u8> = frames.concat();
    for chunk in [1, 2, 5, 9, 10, 17, 4_096, stream.len()] {
        let mut cursor = FrameCursor::default();
        let mut ends = Vec::new();
        for (i, piece) in stream.chunks(chunk).enumerate() {
            for (j, byte) in piece.iter().enumerate() {
                cursor.advance(std::slice::from_ref(byte));
                if cursor.at_boundary() {
                    ends.push(i * chunk + j + 1);
                }
            }
        }
        let expected: Vec<usize> = frames
            .iter()
            .scan(0, |end, f| {
                *end += f.len();
                Some(*end)
            })
            .collect();
        assert_eq!(ends, expected, "chunk {chunk}");
        assert_eq!(cursor.frames, frames.len() as u64);
    }
}

#[test]
fn frame_end_stops_at_the_end_of_the_frame_in_progress_or_the_next() {
    let stream: Vec<u8> = server_frames().concat();
    let first = server_frames()[0].len();
    let cursor = FrameCursor::default();
    // At a boundary: the whole next frame.
    assert_eq!(cursor.frame_end(&stream), first);
    // Inside the first frame (in its header, then in its payload): the rest of it.
    for at in [3, 9, 20] {
        let mut inside = FrameCursor::default();
        inside.advance(&stream[..at]);
        assert_eq!(inside.frame_end(&stream[at..]), first - at, "at {at}");
    }
    // Fewer bytes than the frame: all of them.
    assert_eq!(cursor.frame_end(&stream[..5]), 5);
}

#[test]
fn serving_connections_pass_through_untouched() {
    with_drain(false, || {
        for http2 in [true, false] {
            let mut io = GoAway::new(Sink::default(), http2);
            let stream = server_frames().concat();
            write_all(&mut io, &stream, 1_000);
            assert_eq!(io.io.out, stream);
        }
    });
}

#[test]
fn a_draining_h2_connection_gets_one_goaway_between_two_frames_after_the_first() {
    with_drain(true, || {
        for (chunk, max_write) in [(1, 0), (7, 0), (100, 3), (20_000, 0), (20_000, 1_000)] {
            let mut io = GoAway::new(
                Sink {
                    max_write,
                    ..Sink::default()
                },
                true,
            );
            let frames = server_frames();
            write_all(&mut io, &frames.concat(), chunk);
            let written = parse(&io.io.out);
            let goaways: Vec<usize> = written
                .iter()
                .enumerate()
                .filter(|(_, f)| f[3] == 0x7)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(goaways, vec![1], "chunk {chunk}, max write {max_write}");
            assert_eq!(written[1], GOAWAY_FRAME.to_vec());
            // The server's own frames are all there, in order, unchanged.
            let own: Vec<Vec<u8>> = written.into_iter().filter(|f| f[3] != 0x7).collect();
            assert_eq!(own, frames, "chunk {chunk}, max write {max_write}");
        }
    });
}

#[test]
fn a_drain_that_begins_mid_frame_waits_for_its_end() {
    let frames = server_frames();
    let stream = frames.concat();
    // Serving for the first frame and half of the 16 KiB one, then draining.
    let half = frames[..3].concat().len() + frames[3].len() / 2;
    let mut io = GoAway::new(Sink::default(), true);
    with_drain(false, || write_all(&mut io, &stream[..half], 4_096));
    with_drain(true, || write_all(&mut io, &stream[half..], 4_096));
    let written = parse(&io.io.out);
    let kinds: Vec<u8> = written.iter().map(|f| f[3]).collect();
    assert_eq!(kinds, vec![0x4, 0x1, 0x0, 0x0, 0x7, 0x1, 0x0]);
}

#[test]
fn http1_connections_never_get_a_frame() {
    with_drain(true, || {
        let mut io = GoAway::new(Sink::default(), false);
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        write_all(&mut io, &response, 5);
        assert_eq!(io.io.out, response);
    });
}

#[test]
fn an_idle_connection_gets_its_goaway_from_the_read_side() {
    let _lock = crate::draining::TEST_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    crate::draining::set(false);
    let mut io = GoAway::new(Sink::default(), true);
    let mut cx = Context::from_waker(Waker::noop());
    let settings = frame(0x4, 0, 6);
    write_all(&mut io, &settings, 100);
    let mut buf = [0u8; 16];
    // Waiting for the client: registers with the drain signal, writes nothing.
    assert!(Pin::new(&mut io)
        .poll_read(&mut cx, &mut ReadBuf::new(&mut buf))
        .is_pending());
    assert_eq!(io.io.out, settings);
    crate::draining::set(true);
    // Woken by the drain, with nothing of the server's to write: the frame goes out, flushed.
    assert!(Pin::new(&mut io)
        .poll_read(&mut cx, &mut ReadBuf::new(&mut buf))
        .is_pending());
    crate::draining::set(false);
    assert_eq!(parse(&io.io.out), vec![settings, GOAWAY_FRAME.to_vec()]);
    assert_eq!(io.io.flushes, 1);
}
