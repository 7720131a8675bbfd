//! Operator actions on tenants, and the history they leave in the meta group: creating a
//! tenant, planned switchover, manual failover, mode changes (issue #4). Automatic failover is
//! not here: it is the meta leader's controller (`controller.rs`). It owns no state.

use std::sync::Arc;

use super::directory::Directory;
use super::status::Status;
use crate::api::error::ApiError;
use crate::config::NodeConfig;
use crate::meta::state::{
    EventKind, MetaCommand, MetaReply, Mode, OnLag, TenantEvent, TenantRecord, TenantSpec, TenantState as TState,
};
use crate::seams::clock::ClockRef;
use crate::tenant::placement;

fn valid_tenant_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "tenant name {name:?} must be 1-63 characters of a-z, 0-9, '-' and '_', not starting with '-'"
        )))
    }
}

/// The operator's actions on tenants.
pub(crate) struct Operator {
    cfg: Arc<NodeConfig>,
    clock: ClockRef,
    directory: Arc<Directory>,
    status: Arc<Status>,
}

impl Operator {
    pub(super) fn new(cfg: Arc<NodeConfig>, clock: ClockRef, directory: Arc<Directory>, status: Arc<Status>) -> Self {
        Self { cfg, clock, directory, status }
    }

    pub(crate) async fn create_tenant(
        &self,
        name: &str,
        mode: &str,
        primary: Option<&str>,
        rpo_target_ms: u64,
        on_lag: &str,
        regions: &[String],
    ) -> Result<TenantRecord, ApiError> {
        valid_tenant_name(name)?;
        let mode = Mode::parse(mode)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown mode {mode:?}: sync, near-sync or async")))?;
        let on_lag = if on_lag.is_empty() {
            OnLag::Block
        } else {
            OnLag::parse(on_lag).map_err(|e| ApiError::BadRequest(e.to_string()))?
        };
        let topo = self.directory.topology();
        let primaries = {
            let meta = self.directory.meta().sm.read().await;
            if let Some(existing) = meta.state.tenants.get(name) {
                // Idempotent create: same spec answers with the existing record.
                let same = existing.spec.mode == mode && primary.is_none_or(|p| p == existing.spec.primary);
                if same {
                    return Ok(existing.clone());
                }
            }
            meta.state.primaries_per_region()
        };
        let primary = match primary {
            Some(p) => p.to_string(),
            None => placement::default_primary(&topo, regions, &primaries)
                .ok_or_else(|| ApiError::BadRequest("no region is available for the tenant".into()))?,
        };
        let spec =
            TenantSpec { name: name.to_string(), mode, primary, rpo_target_ms, on_lag, regions: regions.to_vec() };
        if mode == Mode::NearSync && spec.rpo_target_ms == 0 {
            return Err(ApiError::BadRequest("near-sync needs an rpo target above zero (e.g. --rpo-target 1s)".into()));
        }
        let placed = self.directory.place_for(&spec, None).await?;
        let record = TenantRecord {
            spec,
            epoch: 1,
            founder: placed.voters[0],
            voters: placed.voters,
            learners: placed.learners,
            created_at_ms: self.clock.wall_now_ms(),
            state: TState::Healthy,
            version: 0,
            base: None,
            sealed: false,
            failover_to: None,
            acked: None,
        };
        match self.directory.propose_meta(MetaCommand::CreateTenant { record }).await? {
            MetaReply::TenantCreated(r) | MetaReply::TenantExists(r) => Ok(r),
            MetaReply::Refused { reason } => Err(ApiError::BadRequest(reason)),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Every recorded event of a tenant, oldest first (read on the meta leader).
    pub(crate) async fn tenant_history(&self, tenant: &str) -> Result<Vec<TenantEvent>, ApiError> {
        // Confirms the tenant exists, linearizably when this node's directory lacks it.
        self.directory.tenant_record(tenant).await?;
        let _ = self.directory.meta().read_barrier().await;
        Ok(self.directory.meta().sm.read().await.state.history.get(tenant).cloned().unwrap_or_default())
    }

    /// Changes a live tenant's mode (and its near-sync parameters), validating the placement the
    /// new mode needs.
    pub(crate) async fn set_mode(
        &self,
        tenant: &str,
        mode: &str,
        rpo_target_ms: Option<u64>,
        on_lag: Option<&str>,
    ) -> Result<TenantRecord, ApiError> {
        let mode = Mode::parse(mode)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown mode {mode:?}: sync, near-sync or async")))?;
        let on_lag = on_lag.map(OnLag::parse).transpose().map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let rec = self.directory.tenant_record(tenant).await?;
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
        let placed = self.directory.place_for(&next.spec, Some(&rec)).await?;
        next.voters = placed.voters;
        next.learners = placed.learners;
        let detail = format!(
            "{} -> {} (rpo target {} ms, on lag {})",
            rec.spec.mode.as_str(),
            mode.as_str(),
            next.spec.rpo_target_ms,
            next.spec.on_lag
        );
        let ev = TenantEvent::new(EventKind::ModeChange, self.clock.wall_now_ms(), rec.epoch, rec.epoch, detail);
        self.directory.update_tenant(&rec, next, Some(ev)).await
    }

    /// Planned switchover: moves the tenant's primary region to `to_region` with zero loss.
    /// The placement moves inside the same epoch (the leader adds the new region's replicas,
    /// makes them voters once they hold everything, then hands over the lead), so every acked
    /// write stays. Returns once a leader in `to_region` acks, or with the recorded event after
    /// [`MOVE_WAIT`] if it has not yet.
    pub(crate) async fn switchover(&self, tenant: &str, to_region: &str) -> Result<TenantEvent, ApiError> {
        let rec = self.directory.tenant_record(tenant).await?;
        self.check_region(&rec, to_region)?;
        if rec.sealed {
            return Err(ApiError::Unavailable(format!("tenant {tenant} is failing over; switch over afterwards")));
        }
        if rec.spec.primary == to_region {
            return Err(ApiError::BadRequest(format!("{to_region} is already {tenant}'s primary region")));
        }
        let mut next = rec.clone();
        next.spec.primary = to_region.to_string();
        let placed = self.directory.place_for(&next.spec, Some(&rec)).await?;
        next.voters = placed.voters;
        next.learners = placed.learners;
        let mut ev = TenantEvent::new(
            EventKind::Switchover,
            self.clock.wall_now_ms(),
            rec.epoch,
            rec.epoch,
            format!("{} -> {to_region}; voters {:?}, learners {:?}", rec.spec.primary, next.voters, next.learners),
        );
        ev.lost_writes_min = Some(0);
        ev.lost_writes_max = Some(0);
        let started = self.clock.mono_now();
        let updated = self.directory.update_tenant(&rec, next, Some(ev.clone())).await?;
        while self.clock.mono_now().saturating_sub(started) < MOVE_WAIT {
            if let Some(l) = self.status.locate_leader(&updated).await {
                if self.directory.region_of(l) == Some(to_region) {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok(ev)
    }

    fn check_region(&self, rec: &TenantRecord, region: &str) -> Result<(), ApiError> {
        if !self.cfg.nodes.iter().any(|n| n.region == region) {
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
    pub(crate) async fn manual_failover(
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
        let rec = self.directory.tenant_record(tenant).await?;
        self.check_region(&rec, to_region)?;
        let from_epoch = rec.epoch;
        if !rec.sealed {
            let mut sealed = rec.clone();
            sealed.sealed = true;
            sealed.failover_to = Some(to_region.to_string());
            self.directory.update_tenant(&rec, sealed, None).await?;
            tracing::warn!(%tenant, epoch = from_epoch, %to_region, "manual failover: epoch sealed");
        }
        let started = self.clock.mono_now();
        loop {
            let _ = self.directory.meta().read_barrier().await;
            if let Some(ev) =
                self.directory.meta().sm.read().await.state.history.get(tenant).and_then(|h| {
                    h.iter().rev().find(|e| e.from_epoch == from_epoch && e.to_epoch > from_epoch).cloned()
                })
            {
                return Ok(ev);
            }
            if self.clock.mono_now().saturating_sub(started) > MOVE_WAIT {
                return Err(ApiError::Unavailable(format!(
                    "the epoch is sealed but no replica in {to_region} has been promoted yet (the old voters may still hold valid leases); the meta leader keeps trying: watch `tetradctl tenant history {tenant}`"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The audit log's retained entries (with their sequence numbers) that concern `tenant` (all
    /// when `None`) and whose last request was at or after `since_ms`, oldest first, at most
    /// `limit` (the newest of them); and how many entries retention has dropped. Read after a
    /// read barrier, so it includes every entry committed before the call.
    pub(crate) async fn audit_log(
        &self,
        tenant: Option<&str>,
        since_ms: u64,
        limit: usize,
    ) -> (Vec<(u64, crate::meta::state::AuditEntry)>, u64) {
        let _ = self.directory.meta().read_barrier().await;
        let sm = self.directory.meta().sm.read().await;
        let log = &sm.state.audit;
        let mut out: Vec<_> = log
            .iter()
            .rev()
            .filter(|(_, e)| e.last_at_ms >= since_ms && tenant.is_none_or(|t| e.tenant.as_deref() == Some(t)))
            .take(limit)
            .map(|(s, e)| (s, e.clone()))
            .collect();
        out.reverse();
        (out, log.dropped())
    }
}

/// How long an operator's switchover or failover call waits for the move to finish.
const MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
