//! Schedule routes: `/schedules` (list, create), `/schedules/{name}`
//! (read with its last fires and gates, create or replace, delete), and
//! the actions `pause`, `resume`, `trigger`, `backfill`, plus the fire
//! history. Every change answers once it is committed, a fire's task with
//! it. `/events/schedules` streams what is committed about schedules.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use taskgrid_api::{
    BackfillRequest, FireList, PauseRequest, SSE_RESET, ScheduleDetail, ScheduleEventFilter,
    ScheduleInfo, ScheduleList, ScheduleRequest, StreamReset,
};
use taskgrid_core::check_schedule_name;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, OptionalJson, last_event_id};

/// Fires shown with a schedule.
const DETAIL_FIRES: usize = 20;
/// Schedule events a slow client may have queued before its stream waits.
const EVENTS_BUFFER: usize = 256;
/// Longest pause note (bytes).
const NOTE_MAX: usize = 1024;

fn check_name(name: &str) -> ApiResult<()> {
    check_schedule_name(name).map_err(|e| ApiError::invalid("name", e.to_string()))
}

/// `GET /schedules`.
pub(crate) async fn list(State(s): State<AppState>) -> ApiResult<Json<ScheduleList>> {
    let schedules = s.system.schedules().await?;
    Ok(Json(ScheduleList {
        schedules: schedules.iter().map(ScheduleInfo::from_view).collect(),
    }))
}

/// `POST /schedules`: 201 with the new schedule; 409 if the name exists.
pub(crate) async fn create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> ApiResult<(StatusCode, Json<ScheduleInfo>)> {
    let name = req
        .name
        .clone()
        .ok_or_else(|| ApiError::invalid("name", "a schedule needs a name"))?;
    put_inner(&s, &name, req, true).await
}

/// `PUT /schedules/{name}`: create (201) or replace the definition (200),
/// keeping the schedule's history.
pub(crate) async fn put(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> ApiResult<(StatusCode, Json<ScheduleInfo>)> {
    if req.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::invalid(
            "name",
            "the body's name differs from the path's",
        ));
    }
    put_inner(&s, &name, req, false).await
}

async fn put_inner(
    s: &AppState,
    name: &str,
    req: ScheduleRequest,
    create_only: bool,
) -> ApiResult<(StatusCode, Json<ScheduleInfo>)> {
    check_name(name)?;
    let (spec, template) = req
        .into_core()
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let (view, created) = s
        .system
        .put_schedule(name, spec, template, create_only)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ScheduleInfo::from_view(&view))))
}

/// `GET /schedules/{name}`: the schedule, its last 20 fires and what
/// holds it back.
pub(crate) async fn detail(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ScheduleDetail>> {
    check_name(&name)?;
    let view = s.system.schedule(&name).await?;
    let gates = s.system.explain_schedule(&name).await?;
    let fires = s.system.schedule_fires(&name, DETAIL_FIRES).await?;
    Ok(Json(ScheduleDetail {
        schedule: ScheduleInfo::from_view(&view),
        fires,
        gates,
    }))
}

/// `GET /schedules/{name}/fires`: the last 1000 fires, newest first.
pub(crate) async fn fires(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<FireList>> {
    check_name(&name)?;
    s.system.schedule(&name).await?;
    let fires = s
        .system
        .schedule_fires(&name, taskgrid_runtime::FIRES_LIMIT_MAX)
        .await?;
    Ok(Json(FireList { fires }))
}

/// `DELETE /schedules/{name}`: 204.
pub(crate) async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    check_name(&name)?;
    s.system.delete_schedule(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /schedules/{name}/pause` with an optional `{"note"}` (an empty
/// body pauses without one).
pub(crate) async fn pause(
    State(s): State<AppState>,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<PauseRequest>,
) -> ApiResult<Json<ScheduleInfo>> {
    check_name(&name)?;
    if let Some(n) = &req.note
        && (n.len() > NOTE_MAX || n.chars().any(|c| c.is_control() && c != '\n'))
    {
        return Err(ApiError::invalid(
            "note",
            format!("a note is at most {NOTE_MAX} bytes without control characters"),
        ));
    }
    let view = s.system.pause_schedule(&name, req.note).await?;
    Ok(Json(ScheduleInfo::from_view(&view)))
}

/// `POST /schedules/{name}/resume`.
pub(crate) async fn resume(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ScheduleInfo>> {
    check_name(&name)?;
    let view = s.system.resume_schedule(&name).await?;
    Ok(Json(ScheduleInfo::from_view(&view)))
}

/// `POST /schedules/{name}/trigger`: runs the task now (201, the fire).
pub(crate) async fn trigger(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<FireList>)> {
    check_name(&name)?;
    let fire = s.system.trigger_schedule(&name).await?;
    Ok((StatusCode::CREATED, Json(FireList { fires: vec![fire] })))
}

/// `POST /schedules/{name}/backfill` with `{"from","to"}`: runs the past
/// fires of the range not backfilled before (at most 1000 at once).
pub(crate) async fn backfill(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<BackfillRequest>,
) -> ApiResult<Json<FireList>> {
    check_name(&name)?;
    let fires = s.system.backfill_schedule(&name, req.from, req.to).await?;
    Ok(Json(FireList { fires }))
}

/// `GET /events/schedules[?schedule=NAME]`: every committed
/// [`taskgrid_api::ScheduleEvent`] as server-sent events (SSE id: its `seq`).
///
/// There is no replay: a client that reconnects with the `Last-Event-ID`
/// of the last event published gets the live stream; with any other id
/// (it missed some, or the coordinator restarted) a `reset` comes first,
/// and it should re-read `/schedules`. A client that falls 1,024 events
/// behind is sent a `reset` and goes on live.
pub(crate) async fn events(
    State(s): State<AppState>,
    ApiQuery(filter): ApiQuery<ScheduleEventFilter>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let resume = last_event_id(&headers)?;
    if let Some(name) = &filter.schedule {
        check_name(name)?;
    }
    let (mut bus, last) = s.system.subscribe_schedules();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(EVENTS_BUFFER);
    tokio::spawn(async move {
        let reset = |after: u64| {
            Event::default()
                .event(SSE_RESET)
                .json_data(StreamReset { after })
                .ok()
        };
        if let Some(after) = resume
            && after != last
            && let Some(ev) = reset(after)
            && tx.send(Ok(ev)).await.is_err()
        {
            return;
        }
        loop {
            let ev = tokio::select! {
                ev = bus.recv() => ev,
                _ = tx.closed() => return,
            };
            let sse = match ev {
                Ok(ev) => {
                    if filter.schedule.as_ref().is_some_and(|n| *n != ev.schedule) {
                        continue;
                    }
                    Event::default().id(ev.seq.to_string()).json_data(&ev).ok()
                }
                Err(RecvError::Lagged(_)) => reset(0),
                Err(RecvError::Closed) => return,
            };
            if let Some(sse) = sse
                && tx.send(Ok(sse)).await.is_err()
            {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}
