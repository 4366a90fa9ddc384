//! Server-sent events: a small parser for `text/event-stream`, and
//! [`SseStream`], the stream of decoded items a streaming call returns.
//!
//! A background task reads the response and hands decoded items over a
//! bounded channel, so a slow consumer slows the connection down instead of
//! buffering without end; dropping the stream closes the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ClientError;

/// Items a consumer may be behind before the connection is paused.
const BUFFER: usize = 64;

/// One dispatched SSE event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RawEvent {
    /// The `event:` name; empty for the default (`message`).
    pub(crate) event: String,
    /// The `data:` lines, joined by newlines.
    pub(crate) data: String,
    /// The `id:`, if the event had one.
    pub(crate) id: Option<String>,
}

/// Turns bytes as they arrive into events (the WHATWG algorithm, minus
/// `retry:` and lone-CR line ends, which the coordinator never sends).
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    current: RawEvent,
    has_data: bool,
}

impl Parser {
    /// Feeds bytes; returns the events they completed.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<RawEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let line = self.buf[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&self.buf[start..end]);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str) -> Option<RawEvent> {
        if line.is_empty() {
            let ev = std::mem::take(&mut self.current);
            let had = std::mem::take(&mut self.has_data);
            return had.then_some(ev);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "id" => self.current.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

/// Decoded items of a server-sent event stream. Use [`SseStream::next`],
/// or any `Stream` combinator: it implements `futures_core::Stream`.
///
/// The stream ends when the server closes it; a transport or decoding
/// error is the last item.
#[derive(Debug)]
pub struct SseStream<T> {
    rx: mpsc::Receiver<Result<T, ClientError>>,
    reader: JoinHandle<()>,
}

impl<T: Send + 'static> SseStream<T> {
    /// Reads `response` in the background, decoding each event with
    /// `decode` (`None` skips it).
    pub(crate) fn spawn<F>(mut response: reqwest::Response, decode: F) -> Self
    where
        F: Fn(RawEvent) -> Option<Result<T, ClientError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(BUFFER);
        let reader = tokio::spawn(async move {
            let mut parser = Parser::default();
            loop {
                let chunk = tokio::select! {
                    c = response.chunk() => c,
                    _ = tx.closed() => return,
                };
                let bytes = match chunk {
                    Ok(Some(b)) => b,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(ClientError::Transport(e))).await;
                        return;
                    }
                };
                for raw in parser.push(&bytes) {
                    let Some(item) = decode(raw) else { continue };
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        SseStream { rx, reader }
    }
}

impl<T> SseStream<T> {
    /// The next item, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        self.rx.recv().await
    }
}

impl<T> futures_core::Stream for SseStream<T> {
    type Item = Result<T, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl<T> Drop for SseStream<T> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Decodes an event's JSON data as `T`.
pub(crate) fn json<T: serde::de::DeserializeOwned>(raw: &RawEvent) -> Result<T, ClientError> {
    serde_json::from_str(&raw.data)
        .map_err(|e| ClientError::Decode(format!("{} event: {e}", display_name(&raw.event))))
}

fn display_name(event: &str) -> &str {
    if event.is_empty() { "message" } else { event }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_wherever_the_bytes_split() {
        let text = ": keep-alive\n\nid: 1\ndata: {\"a\":1}\n\nevent: end\r\ndata: x\ndata: y\n\n";
        for split in 0..text.len() {
            let mut p = Parser::default();
            let mut got = p.push(&text.as_bytes()[..split]);
            got.extend(p.push(&text.as_bytes()[split..]));
            assert_eq!(
                got,
                vec![
                    RawEvent {
                        event: String::new(),
                        data: "{\"a\":1}".into(),
                        id: Some("1".into())
                    },
                    RawEvent {
                        event: "end".into(),
                        data: "x\ny".into(),
                        id: None
                    },
                ],
                "split at {split}"
            );
        }
    }
}
