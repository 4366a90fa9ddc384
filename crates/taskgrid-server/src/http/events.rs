//! `GET /events`: every committed [`taskgrid_runtime::TaskEvent`] as server-sent
//! events, optionally filtered by task, queue or tag, with the event's
//! `seq` as SSE id.
//!
//! A client that reconnects with `Last-Event-ID` gets what it missed from
//! the replay buffer, then the live stream, with no duplicate and no gap:
//! the connection subscribes before it replays, and skips live events it
//! has already sent. When the buffer no longer reaches back that far (or
//! the coordinator restarted), a `reset` event comes first. A subscriber
//! that falls behind the bus refills from the replay buffer the same way.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use taskgrid_api::{EventFilter, SSE_RESET, StreamReset};
use taskgrid_core::TaskId;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiQuery, last_event_id};
use taskgrid_runtime::{EventKind, SharedEvent, TaskEvent, TaskSystem};

/// Events a slow client may have queued before its connection is paused.
const CLIENT_BUFFER: usize = 256;
/// Tasks whose queue and tags a connection remembers before starting over.
const CACHE_CAP: usize = 10_000;

/// The stream, resumed after `Last-Event-ID` when given.
pub(crate) async fn events(
    State(s): State<AppState>,
    ApiQuery(filter): ApiQuery<EventFilter>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let resume = last_event_id(&headers)?;
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    let bus = s.system.subscribe();
    let conn = Connection {
        system: s.system.clone(),
        matcher: Matcher {
            filter,
            known: HashMap::new(),
        },
        sent: 0,
        tx,
    };
    tokio::spawn(conn.run(bus, resume));
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct Connection {
    system: Arc<TaskSystem>,
    matcher: Matcher,
    /// The seq of the last event handled (sent or filtered out).
    sent: u64,
    tx: mpsc::Sender<Result<Event, Infallible>>,
}

impl Connection {
    async fn run(mut self, mut bus: broadcast::Receiver<SharedEvent>, resume: Option<u64>) {
        // Whether `sent` says where this connection stands in the stream.
        let mut placed = resume.is_some();
        if let Some(after) = resume
            && !self.replay(after).await
        {
            return;
        }
        loop {
            let ev = tokio::select! {
                ev = bus.recv() => ev,
                _ = self.tx.closed() => return,
            };
            let ok = match ev {
                Ok(ev) if placed && ev.seq <= self.sent => true,
                Ok(ev) => {
                    placed = true;
                    self.send(ev).await
                }
                Err(RecvError::Lagged(_)) if placed => self.replay(self.sent).await,
                // Fell behind before the first event: where it began is
                // unknown, so say that some were missed and go on live.
                Err(RecvError::Lagged(_)) => self.reset(0).await,
                Err(RecvError::Closed) => false,
            };
            if !ok {
                return;
            }
        }
    }

    /// Sends the buffered events after `after`, preceded by `reset` when
    /// some are gone. False once the client has gone.
    async fn replay(&mut self, after: u64) -> bool {
        let (events, complete) = self.system.events_since(after);
        // An id this process never gave out (from an earlier process, or
        // older than its first event): start over with what is buffered.
        let foreign = !self.system.issued_event(after);
        if (!complete || foreign) && !self.reset(after).await {
            return false;
        }
        self.sent = if foreign { 0 } else { after };
        for ev in events {
            if !self.send(ev).await {
                return false;
            }
        }
        true
    }

    /// Tells the client that events after `after` may be missing.
    async fn reset(&self, after: u64) -> bool {
        match Event::default()
            .event(SSE_RESET)
            .json_data(StreamReset { after })
        {
            Ok(ev) => self.tx.send(Ok(ev)).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Sends one event if the filter wants it. False once the client has
    /// gone.
    async fn send(&mut self, ev: SharedEvent) -> bool {
        self.sent = ev.seq;
        if !self.matcher.wants(&self.system, &ev).await {
            return true;
        }
        // Serialized once for every connection that sends it.
        let Some(json) = ev.wire_json() else {
            return true;
        };
        let sse = Event::default().id(ev.seq.to_string()).data(&*json);
        self.tx.send(Ok(sse)).await.is_ok()
    }
}

/// A connection's filter, with the queue and tags of the tasks it has
/// looked up (events other than `submitted` do not carry them).
struct Matcher {
    filter: EventFilter,
    known: HashMap<TaskId, Option<(String, Vec<String>)>>,
}

impl Matcher {
    async fn wants(&mut self, system: &TaskSystem, ev: &TaskEvent) -> bool {
        let f = &self.filter;
        if f.task.is_some_and(|t| t != ev.id) {
            return false;
        }
        if f.queue.is_none() && f.tag.is_none() {
            return true;
        }
        if let (EventKind::Submitted { queue, .. }, None) = (&ev.kind, &f.tag) {
            return f.queue.as_deref() == Some(&**queue);
        }
        if self.known.len() >= CACHE_CAP {
            self.known.clear();
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.known.entry(ev.id) {
            let facts = system
                .get(ev.id)
                .await
                .ok()
                .map(|r| (r.spec.queue.to_string(), r.spec.tags));
            e.insert(facts);
        }
        let facts = self.known.get(&ev.id).unwrap_or(&None);
        let wanted = facts.as_ref().is_some_and(|(queue, tags)| {
            f.queue.as_ref().is_none_or(|q| q == queue)
                && f.tag.as_ref().is_none_or(|t| tags.contains(t))
        });
        if ev.new_state().is_some_and(|s| s.is_terminal()) {
            self.known.remove(&ev.id);
        }
        wanted
    }
}
