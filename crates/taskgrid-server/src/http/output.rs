//! `GET /tasks/{id}/output`: a task's output a page at a time, or followed
//! as server-sent events until the task ends.
//!
//! A follower reads the store, then sleeps until the event bus says
//! something happened to its task (or the task's end is committed), and
//! reads again from where it was: no polling on a timer, no chunk twice.
//! The stream closes with an `end` event carrying the terminal state.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use taskgrid_api::{OutputEnd, OutputEntry, OutputPage, OutputQuery, SSE_END};
use taskgrid_core::{OutputChunk, TaskId};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiQuery, TaskPath, last_event_id};
use taskgrid_runtime::{TaskResult, TaskSystem};

/// Events a slow follower may have queued before it is paused.
const FOLLOW_BUFFER: usize = 64;

fn entry(seq: u64, c: OutputChunk) -> OutputEntry {
    OutputEntry {
        seq,
        attempt: c.attempt,
        stream: c.stream,
        data: c.data,
    }
}

/// One page, or (with `follow=true`) an SSE stream resuming after
/// `Last-Event-ID` when the client sends one.
pub(crate) async fn output(
    State(s): State<AppState>,
    TaskPath(id): TaskPath,
    ApiQuery(q): ApiQuery<OutputQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // 404 for an unknown task, rather than an empty page.
    s.system.get(id).await?;
    let limit = q
        .limit
        .unwrap_or(s.config.max_page)
        .clamp(1, s.config.max_page);
    let after = q.after.unwrap_or(0);
    if q.follow.unwrap_or(false) {
        let after = after.max(last_event_id(&headers)?.unwrap_or(0));
        return Ok(follow(s.system.clone(), id, after, limit));
    }
    let chunks: Vec<OutputEntry> = s
        .system
        .output_since(id, after, limit)
        .await?
        .into_iter()
        .map(|(seq, c)| entry(seq, c))
        .collect();
    let next_after = chunks.last().map_or(after, |c| c.seq);
    Ok(Json(OutputPage { chunks, next_after }).into_response())
}

fn follow(system: Arc<TaskSystem>, id: TaskId, after: u64, page: usize) -> Response {
    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
    // Subscribed before the first read, so no wake-up is missed.
    let events = system.subscribe();
    tokio::spawn(async move {
        let follower = Follower {
            system,
            id,
            after,
            page,
            tx,
        };
        follower.run(events).await;
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

struct Follower {
    system: Arc<TaskSystem>,
    id: TaskId,
    after: u64,
    page: usize,
    tx: mpsc::Sender<Result<Event, Infallible>>,
}

impl Follower {
    async fn run(mut self, mut events: broadcast::Receiver<taskgrid_runtime::SharedEvent>) {
        let handle = self.system.handle(self.id);
        let done = handle.wait();
        tokio::pin!(done);
        loop {
            if !self.drain().await {
                return;
            }
            // Sleep until something happens to this task.
            let end = loop {
                tokio::select! {
                    r = &mut done => break Some(r),
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.id != self.id => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break None,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = self.tx.closed() => return,
                }
            };
            match end {
                None => continue,
                Some(Ok(result)) => {
                    // The end is committed, and every chunk before it.
                    if self.drain().await {
                        self.finish(result).await;
                    }
                    return;
                }
                Some(Err(e)) => {
                    tracing::debug!(task = %self.id, error = %e, "output follower stops");
                    return;
                }
            }
        }
    }

    /// Sends every stored chunk after `self.after`; false once the client
    /// has gone (or the store fails).
    async fn drain(&mut self) -> bool {
        loop {
            let chunks = match self
                .system
                .output_since(self.id, self.after, self.page)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(task = %self.id, error = %e, "output follower cannot read");
                    return false;
                }
            };
            let full = chunks.len() == self.page;
            for (seq, c) in chunks {
                self.after = seq;
                let Ok(ev) = Event::default()
                    .id(seq.to_string())
                    .json_data(entry(seq, c))
                else {
                    continue;
                };
                if self.tx.send(Ok(ev)).await.is_err() {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }

    async fn finish(&self, r: TaskResult) {
        let status = self.system.get(self.id).await.ok().map(|rec| rec.status);
        let exit_code = status.as_ref().and_then(|s| s.exit_code);
        let signal = status.and_then(|s| s.usage).and_then(|u| u.signal);
        let end = OutputEnd {
            id: self.id,
            state: r.state,
            exit_code,
            signal,
            result: r.result,
            error: r.error,
        };
        if let Ok(ev) = Event::default().event(SSE_END).json_data(end) {
            let _ = self.tx.send(Ok(ev)).await;
        }
    }
}
