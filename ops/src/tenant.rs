//! `tetradctl tenant create | list | show`; the operator actions live beside it:
//! [`failover`] (`switchover`, `failover`), [`mode`] (`set-mode`) and [`history`].
//!
//! JSON shape of a tenant (stable; fields may be added; defined in `tetrad_proto::json::Tenant`):
//! `{"name", "mode", "primary", "epoch", "voters", "learners", "state", "created_at_ms", "leader",
//! "term", "rpo_target_ms", "on_lag", "regions"}`; `tenant list --json` prints `{"tenants": [...]}`
//! (`tetrad_proto::json::TenantList`).

pub mod failover;
pub mod history;
pub mod mode;

use std::time::Duration;

use tetrad_proto::json;
use tetrad_proto::v1::{CreateTenantRequest, GetTenantRequest, ListTenantsRequest, TenantInfo};

use crate::client::Session;
use crate::exit::{gave_up, CmdResult, Op};
use crate::table::Table;

/// Replication mode and the near-sync lag choice: the node's own types (tetrad-core), parsed
/// from the spellings the API uses (`cli.rs`).
pub use tetrad_core::directory::{Mode, OnLag};

#[derive(Debug, Clone)]
pub struct CreateArgs {
    pub name: String,
    pub mode: Mode,
    pub primary: Option<String>,
    pub rpo_target: Option<Duration>,
    pub on_lag: Option<OnLag>,
    pub regions: Vec<String>,
}

/// The request, built without I/O. Unset options travel as the API's "empty: cluster decides".
pub fn create_request(a: &CreateArgs) -> CreateTenantRequest {
    CreateTenantRequest {
        name: a.name.clone(),
        mode: a.mode.as_str().to_owned(),
        primary: a.primary.clone().unwrap_or_default(),
        rpo_target_ms: a.rpo_target.map_or(0, duration_to_ms),
        on_lag: a.on_lag.map(|o| o.as_str().to_owned()).unwrap_or_default(),
        regions: a.regions.clone(),
    }
}

pub async fn create(session: &mut Session, args: &CreateArgs) -> CmdResult<TenantInfo> {
    let req = create_request(args);
    session
        .unary(|mut c| {
            let req = req.clone();
            async move { c.create_tenant(req).await }
        })
        .await
        .map_err(|g| gave_up(Op::Other, &format!("creating tenant {}", args.name), g))
}

pub async fn list(session: &mut Session) -> CmdResult<Vec<TenantInfo>> {
    session
        .unary(|mut c| async move { c.list_tenants(ListTenantsRequest {}).await })
        .await
        .map(|r| r.tenants)
        .map_err(|g| gave_up(Op::Other, "listing tenants", g))
}

pub async fn show(session: &mut Session, name: &str) -> CmdResult<TenantInfo> {
    session
        .unary(|mut c| {
            let req = GetTenantRequest { name: name.to_owned() };
            async move { c.get_tenant(req).await }
        })
        .await
        .map_err(|g| gave_up(Op::Other, &format!("tenant {name}"), g))
}

/// The printed form of a tenant (`tetrad_proto::json::Tenant`, where the shape is defined).
pub fn to_json(t: &TenantInfo) -> json::Tenant {
    json::Tenant {
        name: t.name.clone(),
        mode: t.mode.clone(),
        primary: t.primary.clone(),
        epoch: t.epoch,
        voters: t.voters.clone(),
        learners: t.learners.clone(),
        state: t.state.clone(),
        created_at_ms: t.created_at_ms,
        leader: t.leader.clone(),
        term: t.term,
        rpo_target_ms: t.rpo_target_ms,
        on_lag: t.on_lag.clone(),
        regions: t.regions.clone(),
    }
}

pub fn render_json(t: &TenantInfo) -> String {
    serde_json::to_string_pretty(&to_json(t)).expect("tenant JSON always serializes")
}

pub fn render_list_json(ts: &[TenantInfo]) -> String {
    let list = json::TenantList { tenants: ts.iter().map(to_json).collect() };
    serde_json::to_string_pretty(&list).expect("tenant JSON always serializes")
}

pub fn render(t: &TenantInfo) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let regions = if t.regions.is_empty() { "any".to_owned() } else { t.regions.join(", ") };
    format!(
        "tenant     {}\nmode       {}\nstate      {}\nprimary    {}\nrpo target {}\non lag     {}\nregions    {regions}\nepoch      {}\nleader     {} (term {})\nvoters     {}\nlearners   {}\ncreated    {}\n",
        t.name,
        t.mode,
        t.state,
        t.primary,
        rpo_target(t.rpo_target_ms),
        if t.on_lag.is_empty() { "-" } else { &t.on_lag },
        t.epoch,
        if t.leader.is_empty() { "(none)" } else { &t.leader },
        t.term,
        list(&t.voters),
        list(&t.learners),
        rfc3339_ms(t.created_at_ms),
    )
}

/// An rpo target for people: `1s`, `500ms`; `-` when none is set.
pub fn rpo_target(ms: u64) -> String {
    if ms == 0 {
        "-".to_owned()
    } else {
        humantime::format_duration(Duration::from_millis(ms)).to_string()
    }
}

/// A duration in whole milliseconds, as the API carries it. The command line accepts only whole
/// milliseconds for the values that go here (see [`crate::cli::parse_ms_duration`]).
pub fn duration_to_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn render_list(ts: &[TenantInfo]) -> String {
    if ts.is_empty() {
        return "no tenants\n".to_owned();
    }
    let mut table = Table::new(["TENANT", "MODE", "STATE", "PRIMARY", "EPOCH", "LEADER", "TERM"]);
    for t in ts {
        table.row([
            t.name.clone(),
            t.mode.clone(),
            t.state.clone(),
            t.primary.clone(),
            t.epoch.to_string(),
            t.leader.clone(),
            t.term.to_string(),
        ]);
    }
    table.render()
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_request_spells_options_as_the_api_does() {
        let args = CreateArgs {
            name: "acme".into(),
            mode: Mode::NearSync,
            primary: Some("eu-west".into()),
            rpo_target: Some(humantime::parse_duration("500ms").expect("duration")),
            on_lag: Some(OnLag::Degrade),
            regions: vec!["eu-west".into(), "eu-central".into()],
        };
        let req = create_request(&args);
        assert_eq!(
            req,
            CreateTenantRequest {
                name: "acme".into(),
                mode: "near-sync".into(),
                primary: "eu-west".into(),
                rpo_target_ms: 500,
                on_lag: "degrade".into(),
                regions: vec!["eu-west".into(), "eu-central".into()],
            }
        );
        let bare =
            CreateArgs { primary: None, rpo_target: None, on_lag: None, regions: vec![], mode: Mode::Sync, ..args };
        let req = create_request(&bare);
        assert_eq!(
            (req.mode.as_str(), req.primary.as_str(), req.rpo_target_ms, req.on_lag.as_str()),
            ("sync", "", 0, "")
        );
    }

    #[test]
    fn show_prints_the_near_sync_parameters_and_residency() {
        let t = TenantInfo {
            name: "acme".into(),
            mode: "near-sync".into(),
            rpo_target_ms: 1_500,
            on_lag: "degrade".into(),
            regions: vec!["eu-west".into(), "eu-central".into()],
            ..Default::default()
        };
        let text = render(&t);
        assert!(text.contains("rpo target 1s 500ms\non lag     degrade\nregions    eu-west, eu-central\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&render_json(&t)).expect("json");
        assert_eq!((v["rpo_target_ms"].as_u64(), v["on_lag"].as_str()), (Some(1_500), Some("degrade")));
        assert_eq!(v["regions"][1], "eu-central");
        let text = render(&TenantInfo { name: "b".into(), mode: "sync".into(), ..Default::default() });
        assert!(text.contains("rpo target -\non lag     -\nregions    any\n"), "{text}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
