//! The schedule calls of [`Client`].

use reqwest::Method;
use taskgrid_api::{
    BackfillRequest, FireList, PauseRequest, SSE_RESET, ScheduleDetail, ScheduleEvent,
    ScheduleInfo, ScheduleList, ScheduleRequest, StreamReset,
};
use taskgrid_core::{FireRecord, Timestamp};

use crate::sse::{self, SseStream};
use crate::{Client, ClientError, checked};

impl Client {
    /// Every schedule, in name order.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, ClientError> {
        let r: ScheduleList = self.call(self.request(Method::GET, "/schedules")).await?;
        Ok(r.schedules)
    }

    /// Creates a schedule (`replace`: or replaces the definition of the
    /// one with this name, keeping its history).
    pub async fn put_schedule(
        &self,
        name: &str,
        def: &ScheduleRequest,
        replace: bool,
    ) -> Result<ScheduleInfo, ClientError> {
        let mut def = def.clone();
        def.name = Some(name.to_owned());
        let req = if replace {
            self.request(Method::PUT, &format!("/schedules/{name}"))
        } else {
            self.request(Method::POST, "/schedules")
        };
        self.call(req.json(&def)).await
    }

    /// A schedule, its last fires and what holds it back.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleDetail, ClientError> {
        self.call(self.request(Method::GET, &format!("/schedules/{name}")))
            .await
    }

    /// A schedule's last 1000 fires, newest first.
    pub async fn schedule_fires(&self, name: &str) -> Result<Vec<FireRecord>, ClientError> {
        let r: FireList = self
            .call(self.request(Method::GET, &format!("/schedules/{name}/fires")))
            .await?;
        Ok(r.fires)
    }

    /// Pauses a schedule, with a note.
    pub async fn pause_schedule(
        &self,
        name: &str,
        note: Option<String>,
    ) -> Result<ScheduleInfo, ClientError> {
        let body = PauseRequest { note };
        self.call(
            self.request(Method::POST, &format!("/schedules/{name}/pause"))
                .json(&body),
        )
        .await
    }

    /// Resumes a schedule.
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleInfo, ClientError> {
        self.call(self.request(Method::POST, &format!("/schedules/{name}/resume")))
            .await
    }

    /// Runs a schedule's task now; the fire.
    pub async fn trigger_schedule(&self, name: &str) -> Result<Vec<FireRecord>, ClientError> {
        let r: FireList = self
            .call(self.request(Method::POST, &format!("/schedules/{name}/trigger")))
            .await?;
        Ok(r.fires)
    }

    /// Runs the past fires of `from..=to` not backfilled before.
    pub async fn backfill_schedule(
        &self,
        name: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<FireRecord>, ClientError> {
        let body = BackfillRequest { from, to };
        let r: FireList = self
            .call(
                self.request(Method::POST, &format!("/schedules/{name}/backfill"))
                    .json(&body),
            )
            .await?;
        Ok(r.fires)
    }

    /// Deletes a schedule and its fire history.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        checked(
            self.send(self.request(Method::DELETE, &format!("/schedules/{name}")))
                .await?,
        )
        .await?;
        Ok(())
    }

    /// What is committed about schedules (`/events/schedules`), only
    /// `schedule`'s when given. Pass the last `seq` received as
    /// `last_event_id` when reconnecting: a [`ScheduleStreamItem::Reset`]
    /// comes first when events were missed (this stream has no replay), so
    /// re-read [`Client::schedules`] then.
    pub async fn schedule_events(
        &self,
        schedule: Option<&str>,
        last_event_id: Option<u64>,
    ) -> Result<SseStream<ScheduleStreamItem>, ClientError> {
        let mut req = self.request(Method::GET, "/events/schedules");
        if let Some(name) = schedule {
            req = req.query(&[("schedule", name)]);
        }
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = self.open_stream(req).await?;
        Ok(SseStream::spawn(res, |raw| match raw.event.as_str() {
            "" | "message" => Some(sse::json(&raw).map(ScheduleStreamItem::Event)),
            SSE_RESET => Some(sse::json(&raw).map(ScheduleStreamItem::Reset)),
            _ => None,
        }))
    }
}

/// An item of [`Client::schedule_events`].
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleStreamItem {
    /// Something committed about a schedule.
    Event(ScheduleEvent),
    /// Events after `after` may have been missed: re-read the schedules.
    Reset(StreamReset),
}
