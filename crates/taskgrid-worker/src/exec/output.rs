//! A child's output on its way out: read from a pipe, cut into chunks at
//! line breaks, decoded as lossy UTF-8, counted against the attempt's output
//! cap and sent to the caller's channel.
//!
//! [`Chunker`] is the pure part (bytes in, chunks out); [`OutputSink`] is the
//! shared budget of one attempt; [`pump`] drives one pipe until EOF — or,
//! once the process group is gone, until the pipe stays idle (a process that
//! left the group may still hold it open).

use std::sync::Mutex;
use std::time::Duration;

use taskgrid_core::Stream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A partial line (no newline yet) is forwarded after the pipe has been
/// quiet this long, so prompts and progress bars are not held back.
const PARTIAL_LINE_FLUSH: Duration = Duration::from_millis(50);
/// After the process group is gone, a pipe quiet for this long is abandoned.
const DRAIN_IDLE: Duration = Duration::from_millis(250);
/// After the process group is gone, pipes are read for at most this long.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Cuts a byte stream into chunks of at most `max` bytes that end at a line
/// break when one falls within the chunk, and never split a UTF-8
/// character of valid input.
#[derive(Debug)]
pub(crate) struct Chunker {
    buf: Vec<u8>,
    max: usize,
}

impl Chunker {
    pub(crate) fn new(max: usize) -> Self {
        Chunker {
            buf: Vec::new(),
            max: max.max(4),
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether bytes are waiting for the rest of their line.
    pub(crate) fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next chunk that can go now: a full-size chunk, or the complete
    /// lines buffered so far.
    pub(crate) fn next_ready(&mut self) -> Option<Vec<u8>> {
        let window = &self.buf[..self.buf.len().min(self.max)];
        let cut = match window.iter().rposition(|&b| b == b'\n') {
            Some(nl) => nl + 1,
            None if self.buf.len() >= self.max => utf8_prefix_len(window),
            None => return None,
        };
        Some(self.buf.drain(..cut).collect())
    }

    /// Everything buffered, less an incomplete UTF-8 character at the end
    /// unless `eof` (then the rest of that character will never come).
    pub(crate) fn flush(&mut self, eof: bool) -> Option<Vec<u8>> {
        let cut = if eof {
            self.buf.len()
        } else {
            utf8_prefix_len(&self.buf)
        };
        (cut > 0).then(|| self.buf.drain(..cut).collect())
    }
}

/// Length of `b` without a trailing incomplete UTF-8 sequence; `b.len()` if
/// that would leave nothing (the bytes are not UTF-8 anyway).
fn utf8_prefix_len(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=n.min(4) {
        let byte = b[n - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let need = match byte {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if need > back && back < n { n - back } else { n };
    }
    n
}

/// The largest index `<= i` on a char boundary of `s`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Where one attempt's chunks go, with the output budget they share.
pub(crate) struct OutputSink {
    tx: mpsc::Sender<(Stream, String)>,
    max: usize,
    budget: Mutex<Budget>,
}

#[derive(Debug, Default)]
struct Budget {
    used: usize,
    truncated: bool,
}

impl OutputSink {
    pub(crate) fn new(tx: mpsc::Sender<(Stream, String)>, max: usize) -> Self {
        OutputSink {
            tx,
            max,
            budget: Mutex::new(Budget::default()),
        }
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cap was reached and output is being discarded.
    pub(crate) fn truncated(&self) -> bool {
        self.budget().truncated
    }

    /// Forwards `bytes` from `stream` within the budget. The chunk that
    /// crosses the cap is cut and followed by the truncation marker.
    pub(crate) async fn emit(&self, stream: Stream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let (keep, marker) = {
            let mut b = self.budget();
            if b.truncated {
                return;
            }
            let room = self.max - b.used;
            if text.len() <= room {
                b.used += text.len();
                (text.len(), false)
            } else {
                let keep = floor_char_boundary(&text, room);
                b.used += keep;
                b.truncated = true;
                (keep, true)
            }
        };
        if keep > 0 {
            // A closed channel means nobody listens any more; keep draining.
            let _ = self.tx.send((stream, text[..keep].to_owned())).await;
        }
        if marker {
            let line = format!("[output truncated after {} bytes]\n", self.max);
            let _ = self.tx.send((Stream::Stderr, line)).await;
        }
    }
}

/// Reads `pipe` until EOF and forwards what it reads as `stream`. Once
/// `group_gone` turns true, stops when the pipe is idle for [`DRAIN_IDLE`]
/// or [`DRAIN_MAX`] has passed.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    stream: Stream,
    sink: &OutputSink,
    chunk_bytes: usize,
    mut group_gone: watch::Receiver<bool>,
) {
    let mut chunker = Chunker::new(chunk_bytes);
    let mut buf = vec![0u8; chunk_bytes.clamp(8 << 10, 64 << 10)];
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_none() && *group_gone.borrow() {
            drain_until = Some(Instant::now() + DRAIN_MAX);
        }
        if drain_until.is_some_and(|end| Instant::now() >= end) {
            break; // someone outside the group keeps writing
        }
        let wake = match drain_until {
            Some(end) => Some((Instant::now() + DRAIN_IDLE).min(end)),
            None if chunker.has_pending() => Some(Instant::now() + PARTIAL_LINE_FLUSH),
            None => None,
        };
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(_) if sink.truncated() => {} // over the cap: read and drop
                Ok(n) => {
                    chunker.push(&buf[..n]);
                    while let Some(chunk) = chunker.next_ready() {
                        sink.emit(stream, &chunk).await;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(stream = stream.as_str(), error = %e, "reading task output failed");
                    break;
                }
            },
            () = sleep_until(wake) => {
                if drain_until.is_some() {
                    break;
                }
                if let Some(chunk) = chunker.flush(false) {
                    sink.emit(stream, &chunk).await;
                }
            }
            changed = group_gone.changed(), if drain_until.is_none() => {
                if changed.is_err() {
                    // The supervisor is gone; treat it as the group being gone.
                    drain_until = Some(Instant::now() + DRAIN_MAX);
                }
            }
        }
    }
    if let Some(chunk) = chunker.flush(true) {
        sink.emit(stream, &chunk).await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(c: &mut Chunker) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(chunk) = c.next_ready() {
            out.push(String::from_utf8(chunk).unwrap());
        }
        out
    }

    #[test]
    fn complete_lines_go_at_once_and_partial_lines_wait() {
        let mut c = Chunker::new(16);
        c.push(b"one\ntwo\nthr");
        assert_eq!(drain(&mut c), ["one\ntwo\n"]);
        assert!(c.has_pending());
        c.push(b"ee\n");
        assert_eq!(drain(&mut c), ["three\n"]);
        assert!(!c.has_pending());
    }

    #[test]
    fn long_output_is_cut_at_the_last_line_break_within_a_chunk() {
        let mut c = Chunker::new(10);
        c.push(b"aaaa\nbbbb\ncccc\ndd");
        assert_eq!(drain(&mut c), ["aaaa\nbbbb\n", "cccc\n"]);
        assert_eq!(c.flush(true).unwrap(), b"dd");
    }

    #[test]
    fn a_line_longer_than_a_chunk_is_cut_at_the_chunk_size() {
        let mut c = Chunker::new(4);
        c.push(b"abcdefghij\n");
        assert_eq!(drain(&mut c), ["abcd", "efgh", "ij\n"]);
    }

    #[test]
    fn cuts_never_split_a_utf8_character() {
        let mut c = Chunker::new(5);
        c.push("aaaé€x".as_bytes()); // a a a é(2) €(3) x
        assert_eq!(drain(&mut c), ["aaaé"]);
        assert_eq!(c.flush(true).unwrap(), "€x".as_bytes());
        // A flush before EOF keeps an incomplete character for later.
        let euro = "€".as_bytes();
        c.push(&[b'z', euro[0], euro[1]]);
        assert_eq!(c.flush(false).unwrap(), b"z");
        c.push(&euro[2..]);
        assert_eq!(c.flush(false).unwrap(), euro);
    }

    #[test]
    fn invalid_utf8_still_moves_forward() {
        assert_eq!(utf8_prefix_len(&[0xE2]), 1);
        assert_eq!(utf8_prefix_len(&[b'a', 0xE2, 0x82]), 1);
        assert_eq!(utf8_prefix_len(&[0x80, 0x80, 0x80, 0x80, 0x80]), 5);
        let mut c = Chunker::new(4);
        c.push(&[0xFF; 9]);
        assert_eq!(c.next_ready().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn the_sink_cuts_at_the_cap_and_marks_it_once() {
        let (tx, mut rx) = mpsc::channel(16);
        let sink = OutputSink::new(tx, 10);
        sink.emit(Stream::Stdout, b"123456").await;
        sink.emit(Stream::Stdout, b"7890abc").await;
        sink.emit(Stream::Stderr, b"more").await;
        assert!(sink.truncated());
        drop(sink);
        let mut got = Vec::new();
        while let Some(item) = rx.recv().await {
            got.push(item);
        }
        assert_eq!(
            got,
            [
                (Stream::Stdout, "123456".to_owned()),
                (Stream::Stdout, "7890".to_owned()),
                (
                    Stream::Stderr,
                    "[output truncated after 10 bytes]\n".to_owned()
                ),
            ]
        );
    }
}
