//! Operator actions on a tenant's placement and mode, and the history they leave in the meta
//! group: planned switchover, manual failover, mode changes (issue #4).

use super::ops::ApiError;
use super::Node;
use crate::meta::state::{EventKind, MetaCommand, MetaReply, Mode, OnLag, TenantEvent, TenantRecord};

impl Node {
    /// Every recorded event of a tenant, oldest first (read on the meta leader).
    pub async fn tenant_history(&self, tenant: &str) -> Result<Vec<TenantEvent>, ApiError> {
        // Confirms the tenant exists, linearizably when this node's directory lacks it.
        self.tenant_record(tenant).await?;
        let _ = self.inner.meta.read_barrier().await;
        Ok(self.inner.meta.sm.read().await.state.history.get(tenant).cloned().unwrap_or_default())
    }

    /// Changes a live tenant's mode (and its near-sync parameters), validating the placement the
    /// new mode needs.
    pub async fn set_mode(
        &self,
        tenant: &str,
        mode: &str,
        rpo_target_ms: Option<u64>,
        on_lag: Option<&str>,
    ) -> Result<TenantRecord, ApiError> {
        let mode = Mode::parse(mode)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown mode {mode:?}: sync, near-sync or async")))?;
        let on_lag = on_lag.map(OnLag::parse).transpose().map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let rec = self.tenant_record(tenant).await?;
        let mut next = rec.clone();
        next.spec.mode = mode;
        if let Some(r) = rpo_target_ms {
            next.spec.rpo_target_ms = r;
        }
        if let Some(l) = on_lag {
            next.spec.on_lag = l;
        }
        if mode == Mode::NearSync && next.spec.rpo_target_ms == 0 {
            return Err(ApiError::BadRequest("near-sync needs an rpo target above zero (e.g. --rpo-target 1s)".into()));
        }
        if next.spec == rec.spec {
            return Ok(rec);
        }
        let placed = self.place_for(&next.spec, Some(&rec)).await?;
        next.voters = placed.voters;
        next.learners = placed.learners;
        let detail = format!(
            "{} -> {} (rpo target {} ms, on lag {})",
            rec.spec.mode.as_str(),
            mode.as_str(),
            next.spec.rpo_target_ms,
            next.spec.on_lag
        );
        let ev = TenantEvent::new(EventKind::ModeChange, self.inner.clock.wall_now_ms(), rec.epoch, rec.epoch, detail);
        self.update_tenant(&rec, next, Some(ev)).await
    }

    /// Compare-and-set of a tenant's record through the meta leader.
    pub(crate) async fn update_tenant(
        &self,
        current: &TenantRecord,
        next: TenantRecord,
        event: Option<TenantEvent>,
    ) -> Result<TenantRecord, ApiError> {
        match self
            .propose_meta(MetaCommand::UpdateTenant { expect_version: current.version, record: next, event })
            .await?
        {
            MetaReply::TenantUpdated(r) => Ok(r),
            MetaReply::Refused { reason } => Err(ApiError::Unavailable(reason)),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Planned switchover: moves the tenant's primary region to `to_region` with zero loss.
    /// The placement moves inside the same epoch (the leader adds the new region's replicas,
    /// makes them voters once they hold everything, then hands over the lead), so every acked
    /// write stays. Returns once a leader in `to_region` acks, or with the recorded event after
    /// [`MOVE_WAIT`] if it has not yet.
    pub async fn switchover(&self, tenant: &str, to_region: &str) -> Result<TenantEvent, ApiError> {
        let rec = self.tenant_record(tenant).await?;
        self.check_region(&rec, to_region)?;
        if rec.sealed {
            return Err(ApiError::Unavailable(format!("tenant {tenant} is failing over; switch over afterwards")));
        }
        if rec.spec.primary == to_region {
            return Err(ApiError::BadRequest(format!("{to_region} is already {tenant}'s primary region")));
        }
        let mut next = rec.clone();
        next.spec.primary = to_region.to_string();
        let placed = self.place_for(&next.spec, Some(&rec)).await?;
        next.voters = placed.voters;
        next.learners = placed.learners;
        let mut ev = TenantEvent::new(
            EventKind::Switchover,
            self.inner.clock.wall_now_ms(),
            rec.epoch,
            rec.epoch,
            format!("{} -> {to_region}; voters {:?}, learners {:?}", rec.spec.primary, next.voters, next.learners),
        );
        ev.lost_writes_min = Some(0);
        ev.lost_writes_max = Some(0);
        let started = self.inner.clock.mono_now();
        let updated = self.update_tenant(&rec, next, Some(ev.clone())).await?;
        while self.inner.clock.mono_now().saturating_sub(started) < MOVE_WAIT {
            if let Some(l) = self.locate_leader(&updated).await {
                if self.region_of(l) == Some(to_region) {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok(ev)
    }

    fn check_region(&self, rec: &TenantRecord, region: &str) -> Result<(), ApiError> {
        if !self.inner.cfg.nodes.iter().any(|n| n.region == region) {
            return Err(ApiError::BadRequest(format!("region {region:?} does not exist")));
        }
        if !rec.spec.regions.is_empty() && !rec.spec.regions.iter().any(|r| r == region) {
            return Err(ApiError::BadRequest(format!(
                "tenant {} may only live in {} (data residency); {region} is not among them",
                rec.spec.name,
                rec.spec.regions.join(", ")
            )));
        }
        Ok(())
    }

    /// Manual failover: forces promotion of a replica in `to_region`. Refused without
    /// `accept_data_loss`; obeys the same liveness fencing as automatic failover (the meta
    /// leader's controller promotes only once every old voter is sealed or past its lease).
    /// Returns the recorded event, with its loss record.
    pub async fn manual_failover(
        &self,
        tenant: &str,
        to_region: &str,
        accept_data_loss: bool,
    ) -> Result<TenantEvent, ApiError> {
        if !accept_data_loss {
            return Err(ApiError::BadRequest(format!(
                "manual failover of {tenant} to {to_region} can lose acked writes; repeat with --accept-data-loss to proceed"
            )));
        }
        let rec = self.tenant_record(tenant).await?;
        self.check_region(&rec, to_region)?;
        let from_epoch = rec.epoch;
        if !rec.sealed {
            let mut sealed = rec.clone();
            sealed.sealed = true;
            sealed.failover_to = Some(to_region.to_string());
            self.update_tenant(&rec, sealed, None).await?;
            tracing::warn!(%tenant, epoch = from_epoch, %to_region, "manual failover: epoch sealed");
        }
        let started = self.inner.clock.mono_now();
        loop {
            let _ = self.inner.meta.read_barrier().await;
            if let Some(ev) =
                self.inner.meta.sm.read().await.state.history.get(tenant).and_then(|h| {
                    h.iter().rev().find(|e| e.from_epoch == from_epoch && e.to_epoch > from_epoch).cloned()
                })
            {
                return Ok(ev);
            }
            if self.inner.clock.mono_now().saturating_sub(started) > MOVE_WAIT {
                return Err(ApiError::Unavailable(format!(
                    "the epoch is sealed but no replica in {to_region} has been promoted yet (the old voters may still hold valid leases); the meta leader keeps trying: watch `tetradctl tenant history {tenant}`"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// How long an operator's switchover or failover call waits for the move to finish.
const MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
