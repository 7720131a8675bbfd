//! `tetradctl tenant set-mode`: changes a live tenant's replication mode and its near-sync
//! parameters. Options left out keep the tenant's current values; asking for the current spec
//! changes nothing, so the request is retried like any idempotent one.

use std::time::Duration;

use tetrad_proto::v1::{SetTenantModeRequest, TenantInfo};

use crate::client::Session;
use crate::exit::{gave_up, CmdResult, Op};
use crate::tenant::{duration_to_ms, Mode, OnLag};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetModeArgs {
    pub name: String,
    pub mode: Mode,
    pub rpo_target: Option<Duration>,
    pub on_lag: Option<OnLag>,
}

/// The request, built without I/O. Unset options stay unset: the tenant keeps its value.
pub fn set_mode_request(a: &SetModeArgs) -> SetTenantModeRequest {
    SetTenantModeRequest {
        name: a.name.clone(),
        mode: a.mode.as_str().to_owned(),
        rpo_target_ms: a.rpo_target.map(duration_to_ms),
        on_lag: a.on_lag.map(|o| o.as_str().to_owned()),
    }
}

pub async fn set_mode(session: &mut Session, args: &SetModeArgs) -> CmdResult<TenantInfo> {
    let req = set_mode_request(args);
    session
        .unary(|mut c| {
            let req = req.clone();
            async move { c.set_tenant_mode(req).await }
        })
        .await
        .map_err(|g| gave_up(Op::Other, &format!("changing the mode of tenant {}", args.name), g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_options_keep_the_tenants_values() {
        let args = SetModeArgs {
            name: "acme".into(),
            mode: Mode::NearSync,
            rpo_target: Some(Duration::from_millis(750)),
            on_lag: Some(OnLag::Degrade),
        };
        assert_eq!(
            set_mode_request(&args),
            SetTenantModeRequest {
                name: "acme".into(),
                mode: "near-sync".into(),
                rpo_target_ms: Some(750),
                on_lag: Some("degrade".into()),
            }
        );
        let bare = SetModeArgs { mode: Mode::Async, rpo_target: None, on_lag: None, ..args };
        let req = set_mode_request(&bare);
        assert_eq!((req.mode.as_str(), req.rpo_target_ms, req.on_lag), ("async", None, None));
    }
}
