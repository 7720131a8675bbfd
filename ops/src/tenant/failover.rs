//! `tetradctl tenant switchover | failover`: moving a tenant's primary region on purpose.
//!
//! Neither request is sent twice when its outcome is open: a second manual failover would start
//! yet another epoch and could lose the writes acked in between, and a switchover waits for its
//! target region, so a resent one would race the first. Both are sent with
//! [`Session::unary_at_most_once`]; an answer that leaves the outcome open exits 3 and tells the
//! operator to read the tenant's history before running the command again.

use tetrad_proto::v1::{FailoverTenantRequest, SwitchoverTenantRequest, TenantEventInfo};

use crate::client::{GaveUp, Session};
use crate::exit::{code_for, CmdError, CmdResult, Op, USAGE};

/// Refuses a manual failover that the operator has not explicitly accepted loses data. Checked
/// before anything is sent, so the cluster never sees the request.
pub fn require_accepted_loss(tenant: &str, to_region: &str, accept_data_loss: bool) -> CmdResult<()> {
    if accept_data_loss {
        return Ok(());
    }
    Err(CmdError::msg(
        USAGE,
        format!(
            "refusing to fail tenant {tenant} over to {to_region} without --accept-data-loss: a manual failover \
             promotes the most up-to-date replica there and loses every acked write it lacks (the loss is \
             recorded and printed). Nothing was sent. For a move without loss use `tetradctl tenant switchover \
             {tenant} --to {to_region}`; to accept the loss, repeat with --accept-data-loss"
        ),
    ))
}

pub fn failover_request(tenant: &str, to_region: &str, accept_data_loss: bool) -> FailoverTenantRequest {
    FailoverTenantRequest { name: tenant.to_owned(), to_region: to_region.to_owned(), accept_data_loss }
}

/// Forces promotion of a replica in `to_region`. Answers with the recorded event, whose loss
/// record the caller prints.
pub async fn failover(
    session: &mut Session,
    tenant: &str,
    to_region: &str,
    accept_data_loss: bool,
) -> CmdResult<TenantEventInfo> {
    require_accepted_loss(tenant, to_region, accept_data_loss)?;
    let req = failover_request(tenant, to_region, accept_data_loss);
    session
        .unary_at_most_once(|mut c| {
            let req = req.clone();
            async move { c.failover_tenant(req).await }
        })
        .await
        .map_err(|g| give_up(&format!("manual failover of tenant {tenant} to {to_region}"), tenant, g))
}

/// Moves the tenant's primary region to `to_region` without loss.
pub async fn switchover(session: &mut Session, tenant: &str, to_region: &str) -> CmdResult<TenantEventInfo> {
    let req = SwitchoverTenantRequest { name: tenant.to_owned(), to_region: to_region.to_owned() };
    session
        .unary_at_most_once(|mut c| {
            let req = req.clone();
            async move { c.switchover_tenant(req).await }
        })
        .await
        .map_err(|g| give_up(&format!("switchover of tenant {tenant} to {to_region}"), tenant, g))
}

fn give_up(what: &str, tenant: &str, g: GaveUp) -> CmdError {
    let code = code_for(Op::Other, &g);
    let message = match &g {
        GaveUp::Refused(failure) => format!("{what} refused: {failure}"),
        GaveUp::Deadline { .. } => format!("{what}: {g}; nothing was done"),
        GaveUp::OutcomeUnknown(failure) => format!(
            "{what}: {failure}. It may or may not have happened, so it was not sent again: check \
             `tetradctl tenant history {tenant}` and `tetradctl tenant show {tenant}` before running it again"
        ),
    };
    CmdError::msg(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::NO_ANSWER;
    use crate::failure::Failure;

    #[test]
    fn a_failover_without_the_flag_is_refused_with_the_way_forward() {
        let err = require_accepted_loss("acme", "us-east", false).expect_err("refused");
        assert_eq!(err.code, USAGE);
        let text = err.error.to_string();
        for part in ["--accept-data-loss", "Nothing was sent", "tetradctl tenant switchover acme --to us-east"] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert!(require_accepted_loss("acme", "us-east", true).is_ok());
        assert!(failover_request("acme", "us-east", true).accept_data_loss);
    }

    #[test]
    fn an_open_outcome_exits_3_and_points_at_the_history() {
        let err = give_up(
            "manual failover of tenant acme to us-east",
            "acme",
            GaveUp::OutcomeUnknown(Failure::AttemptTimeout { addr: "a:1".into() }),
        );
        assert_eq!(err.code, NO_ANSWER);
        let text = err.error.to_string();
        assert!(text.contains("may or may not have happened") && text.contains("tenant history acme"), "{text}");
        let err = give_up("x", "acme", GaveUp::Deadline { last: None });
        assert_eq!(err.code, NO_ANSWER);
        assert!(err.error.to_string().contains("nothing was done"));
    }
}
