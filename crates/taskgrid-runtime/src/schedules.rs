//! Schedules on a [`TaskSystem`]: create, edit, pause, resume, trigger,
//! backfill, delete and read them. Every command answers once what it
//! changed is committed (a fire's task with it); reads show only committed
//! state.

use std::collections::HashSet;

use taskgrid_core::{
    FireOutcome, FireRecord, ScheduleError, ScheduleGate, ScheduleSpec, ScheduleView, TaskSpec,
    Timestamp,
};

use crate::{Error, TaskSystem};

/// Most fire records [`TaskSystem::schedule_fires`] returns at once.
pub const FIRES_LIMIT_MAX: usize = 1000;
/// Fires [`TaskSystem::explain_schedule`] looks back through for a missed
/// range.
pub const EXPLAIN_FIRES: usize = 100;

impl TaskSystem {
    /// Creates the schedule `name`, or replaces its spec and template
    /// (keeping its history); with `create_only`, an existing name is
    /// [`ScheduleError::Exists`]. Returns the schedule and whether it was
    /// created, once committed.
    pub async fn put_schedule(
        &self,
        name: &str,
        spec: ScheduleSpec,
        template: TaskSpec,
        create_only: bool,
    ) -> Result<(ScheduleView, bool), Error> {
        self.inner.check_runnable_template(&template)?;
        let r = self
            .inner
            .committed_command(|e, now, out| {
                if create_only && e.has_schedule(name) {
                    return Err(ScheduleError::Exists(name.to_owned()));
                }
                let created = e.put_schedule(name, spec, template, now, out)?;
                Ok((e.schedule(name), created))
            })
            .await??;
        match r {
            (Some(view), created) => Ok((view, created)),
            (None, _) => Err(ScheduleError::NotFound(name.to_owned()).into()),
        }
    }

    /// Deletes a schedule and its fire history (its tasks run on).
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        Ok(self
            .inner
            .committed_command(|e, _, out| e.delete_schedule(name, out))
            .await??)
    }

    /// Pauses a schedule, with an optional note.
    pub async fn pause_schedule(
        &self,
        name: &str,
        note: Option<String>,
    ) -> Result<ScheduleView, Error> {
        self.schedule_command(name, |e, now, out| e.pause_schedule(name, note, now, out))
            .await
    }

    /// Resumes a paused schedule: it fires next at its first scheduled
    /// time after now (fires due while it was paused are not run).
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleView, Error> {
        self.schedule_command(name, |e, now, out| e.resume_schedule(name, now, out))
            .await
    }

    /// Runs the schedule's task now, whatever its overlap policy.
    pub async fn trigger_schedule(&self, name: &str) -> Result<FireRecord, Error> {
        Ok(self
            .inner
            .committed_command(|e, now, out| e.trigger_schedule(name, now, out))
            .await??)
    }

    /// Runs the schedule's fires of `from..=to` that are past (up to its
    /// cursor) and were not backfilled before, each once, now. Returns them.
    pub async fn backfill_schedule(
        &self,
        name: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<FireRecord>, Error> {
        // Every fire up to the cursor read here is committed once this
        // returns, so the store knows every earlier backfill of the range.
        let cursor = self
            .inner
            .read_committed(|e| e.schedule(name).map(|v| v.record.state.cursor))
            .await?
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        if to >= from && to.min(cursor) < from {
            // The whole range is still to come: nothing past to run.
            return Ok(Vec::new());
        }
        let to = to.min(cursor);
        let owned = name.to_owned();
        let done: HashSet<Timestamp> = if from <= to {
            self.inner
                .read_store(move |s| s.fires(&owned, Some(from), Some(to), usize::MAX))
                .await?
                .into_iter()
                .filter(|f| f.manual)
                .map(|f| f.at)
                .collect()
        } else {
            HashSet::new()
        };
        Ok(self
            .inner
            .committed_command(|e, now, out| {
                let times = e.backfill_times(name, from, to, &done)?;
                e.backfill_schedule(name, &times, now, out)
            })
            .await??)
    }

    /// One schedule, as committed.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleView, Error> {
        self.inner
            .read_committed(|e| e.schedule(name))
            .await?
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()).into())
    }

    /// Every schedule, in name order, as committed.
    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, Error> {
        self.inner.read_committed(|e| e.schedules()).await
    }

    /// Why a schedule is not firing, or what holds its next fire back; and
    /// the newest range of scheduled times missed (beyond the catch-up
    /// window) among its last [`EXPLAIN_FIRES`] fires.
    pub async fn explain_schedule(&self, name: &str) -> Result<Vec<ScheduleGate>, Error> {
        let now = self.inner.clock.now();
        let mut gates = self
            .inner
            .read_committed(|e| e.explain_schedule(name, now))
            .await?
            .ok_or_else(|| Error::from(ScheduleError::NotFound(name.to_owned())))?;
        let recent = self.schedule_fires(name, EXPLAIN_FIRES).await?;
        if let Some(m) = recent
            .iter()
            .find(|f| f.outcome == FireOutcome::Missed && !f.manual)
        {
            gates.push(ScheduleGate::Missed {
                at: m.at,
                until: m.until.unwrap_or(m.at),
                count: m.count,
            });
        }
        Ok(gates)
    }

    /// The schedule's last fires (at most `limit`, up to
    /// [`FIRES_LIMIT_MAX`]), newest first: what each did, its task, why
    /// one was skipped or missed.
    pub async fn schedule_fires(&self, name: &str, limit: usize) -> Result<Vec<FireRecord>, Error> {
        let owned = name.to_owned();
        let limit = limit.min(FIRES_LIMIT_MAX);
        self.inner
            .read_store(move |s| s.fires(&owned, None, None, limit))
            .await
    }

    async fn schedule_command(
        &self,
        name: &str,
        f: impl FnOnce(
            &mut taskgrid_core::Engine,
            Timestamp,
            &mut taskgrid_core::Outbox,
        ) -> Result<(), ScheduleError>,
    ) -> Result<ScheduleView, Error> {
        self.inner
            .committed_command(|e, now, out| {
                f(e, now, out)?;
                e.schedule(name)
                    .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))
            })
            .await?
            .map_err(Error::from)
    }
}
