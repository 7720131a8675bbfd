//! `tetradctl status`: the cluster's nodes, meta leader and tenants, as a table or as JSON.
//!
//! The JSON shape is stable (fields may be added, never renamed or removed); it is defined once,
//! in `tetrad_proto::json::Status`, which the tests read back:
//!
//! ```json
//! {"nodes": [{"id": "eu-central-1", "region": "eu-central", "up": true,
//!             "api_addr": "127.0.0.1:4001", "last_heartbeat_ago_ms": 120}],
//!  "meta_leader": "eu-central-1",
//!  "tenants": [{"name": "acme", "mode": "near-sync", "state": "healthy", "epoch": 1,
//!               "leader": "eu-west-1", "term": 3, "primary": "eu-west",
//!               "voters": ["..."], "learners": ["..."], "segments": 12,
//!               "rpo_target_ms": 1000, "on_lag": "block", "regions": [],
//!               "lag": [{"region": "us-east", "writes": 0, "bytes": 0, "seconds": 0.0}]}]}
//! ```
//!
//! `meta_leader` is null while no meta leader is known; `last_heartbeat_ago_ms` is null when the
//! node was never heard from. `lag` is what the tenant's leader reports per region (the best
//! replica there): empty while no leader answers. `rpo_target_ms` is 0 when none is set;
//! `regions` is empty when the tenant may live anywhere.
//!
//! The table says loudly what an operator must act on: a tenant that is `degraded` or
//! `catching-up` (its writes are outside its mode's claim), one without a leader, and lag past a
//! near-sync tenant's rpo target.

use tetrad_proto::json;
use tetrad_proto::v1::{StatusReply, StatusRequest, TenantStatus};

use crate::client::Session;
use crate::exit::{gave_up, CmdResult, Op};
use crate::table::{bytes, Table};
use crate::tenant::rpo_target;

pub async fn fetch_status(session: &mut Session) -> CmdResult<StatusReply> {
    session
        .unary(|mut c| async move { c.status(StatusRequest {}).await })
        .await
        .map_err(|g| gave_up(Op::Other, "status", g))
}

/// The printed form of a status reply (`tetrad_proto::json::Status`, where the shape is defined).
pub fn to_json(r: &StatusReply) -> json::Status {
    json::Status {
        nodes: r
            .nodes
            .iter()
            .map(|n| json::Node {
                id: n.id.clone(),
                region: n.region.clone(),
                up: n.up,
                api_addr: n.api_addr.clone(),
                last_heartbeat_ago_ms: u64::try_from(n.last_heartbeat_ago_ms).ok(),
            })
            .collect(),
        meta_leader: Some(r.meta_leader.clone()).filter(|l| !l.is_empty()),
        tenants: r
            .tenants
            .iter()
            .map(|t| json::TenantStatus {
                name: t.name.clone(),
                mode: t.mode.clone(),
                state: t.state.clone(),
                epoch: t.epoch,
                leader: t.leader.clone(),
                term: t.term,
                primary: t.primary.clone(),
                voters: t.voters.clone(),
                learners: t.learners.clone(),
                segments: t.segments,
                rpo_target_ms: t.rpo_target_ms,
                on_lag: t.on_lag.clone(),
                regions: t.regions.clone(),
                lag: t
                    .lag
                    .iter()
                    .map(|l| json::Lag {
                        region: l.region.clone(),
                        writes: l.writes,
                        bytes: l.bytes,
                        seconds: l.seconds,
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub fn render_json(r: &StatusReply) -> String {
    serde_json::to_string_pretty(&to_json(r)).expect("status JSON always serializes")
}

pub fn render_table(r: &StatusReply) -> String {
    let mut out = format!("meta leader: {}\n\n", if r.meta_leader.is_empty() { "(none)" } else { &r.meta_leader });
    let mut nodes = Table::new(["NODE", "REGION", "STATE", "API", "LAST HEARTBEAT"]);
    for n in &r.nodes {
        let heartbeat = match u64::try_from(n.last_heartbeat_ago_ms) {
            Ok(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            Err(_) => "never".to_owned(),
        };
        nodes.row([n.id.as_str(), &n.region, if n.up { "up" } else { "DOWN" }, &n.api_addr, &heartbeat]);
    }
    out.push_str(&nodes.render());
    if r.tenants.is_empty() {
        out.push_str("\nno tenants\n");
        return out;
    }
    let mut tenants = Table::new([
        "TENANT",
        "MODE",
        "STATE",
        "EPOCH",
        "LEADER",
        "TERM",
        "PRIMARY",
        "RPO TARGET",
        "ON LAG",
        "SEGMENTS",
    ]);
    for t in &r.tenants {
        let near_sync = t.mode == "near-sync";
        tenants.row([
            t.name.clone(),
            t.mode.clone(),
            if t.state == "healthy" { t.state.clone() } else { t.state.to_uppercase() },
            t.epoch.to_string(),
            if t.leader.is_empty() { "(none)".to_owned() } else { t.leader.clone() },
            t.term.to_string(),
            t.primary.clone(),
            if near_sync { rpo_target(t.rpo_target_ms) } else { "-".to_owned() },
            if near_sync && !t.on_lag.is_empty() { t.on_lag.clone() } else { "-".to_owned() },
            t.segments.to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&tenants.render());
    let mut lag = Table::new(["TENANT", "REGION", "LAG WRITES", "LAG BYTES", "LAG SECONDS"]);
    for t in &r.tenants {
        if t.lag.is_empty() {
            lag.row([t.name.as_str(), "-", "unknown (no leader answered)", "", ""]);
        }
        for l in &t.lag {
            let mut seconds = format!("{:.3}", l.seconds);
            if over_target(t, l.seconds) {
                seconds.push_str(&format!("  OVER RPO TARGET {}", rpo_target(t.rpo_target_ms)));
            }
            lag.row([t.name.clone(), l.region.clone(), l.writes.to_string(), bytes(l.bytes), seconds]);
        }
    }
    out.push('\n');
    out.push_str(&lag.render());
    let warnings: Vec<String> = r.tenants.iter().flat_map(warnings).collect();
    if !warnings.is_empty() {
        out.push('\n');
        for w in warnings {
            out.push_str(&format!("WARNING: {w}\n"));
        }
    }
    out
}

/// Whether a region's lag is past a near-sync tenant's rpo target.
fn over_target(t: &TenantStatus, lag_seconds: f64) -> bool {
    t.mode == "near-sync" && t.rpo_target_ms > 0 && lag_seconds * 1000.0 > t.rpo_target_ms as f64
}

/// What the operator must know about one tenant, one sentence each.
fn warnings(t: &TenantStatus) -> Vec<String> {
    let mut out = vec![];
    match t.state.as_str() {
        "healthy" => {}
        "degraded" => out.push(format!(
            "tenant {} is degraded: it acks writes as async while its lag gate is closed, so its rpo target \
             does not cover them",
            t.name
        )),
        "catching-up" => out.push(format!(
            "tenant {} is catching up after being degraded: until every acked write is durable in another \
             region it still counts as degraded",
            t.name
        )),
        other => out.push(format!("tenant {} is {other}", t.name)),
    }
    if t.leader.is_empty() {
        out.push(format!("tenant {} has no leader: its writes wait until one is elected or it fails over", t.name));
    }
    let over: Vec<&str> = t.lag.iter().filter(|l| over_target(t, l.seconds)).map(|l| l.region.as_str()).collect();
    if !over.is_empty() {
        out.push(format!(
            "tenant {} lags more than its rpo target {} in {}",
            t.name,
            rpo_target(t.rpo_target_ms),
            over.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use tetrad_proto::v1::{NodeStatus, RegionLag};

    use super::*;

    fn sample() -> StatusReply {
        StatusReply {
            nodes: vec![
                NodeStatus {
                    id: "eu-central-1".into(),
                    region: "eu-central".into(),
                    up: true,
                    api_addr: "127.0.0.1:1".into(),
                    last_heartbeat_ago_ms: 250,
                },
                NodeStatus {
                    id: "us-east-1".into(),
                    region: "us-east".into(),
                    up: false,
                    api_addr: "127.0.0.1:2".into(),
                    last_heartbeat_ago_ms: -1,
                },
            ],
            meta_leader: "eu-central-1".into(),
            tenants: vec![TenantStatus {
                name: "acme".into(),
                mode: "near-sync".into(),
                state: "degraded".into(),
                epoch: 2,
                leader: "eu-central-1".into(),
                term: 7,
                lag: vec![RegionLag { region: "us-east".into(), writes: 3, bytes: 48 << 20, seconds: 1.5 }],
                primary: "eu-central".into(),
                voters: vec!["eu-central-1".into()],
                segments: 9,
                learners: vec!["us-east-1".into()],
                rpo_target_ms: 1_000,
                on_lag: "degrade".into(),
                regions: vec![],
            }],
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&sample())).expect("json");
        assert_eq!(v["meta_leader"], "eu-central-1");
        assert_eq!(v["nodes"][0]["id"], "eu-central-1");
        assert_eq!(v["nodes"][0]["region"], "eu-central");
        assert_eq!(v["nodes"][1]["up"], false);
        assert!(v["nodes"][1]["last_heartbeat_ago_ms"].is_null());
        let t = &v["tenants"][0];
        for (key, want) in [("name", "acme"), ("mode", "near-sync"), ("state", "degraded"), ("leader", "eu-central-1")]
        {
            assert_eq!(t[key], want, "{key}");
        }
        assert_eq!((t["epoch"].as_u64(), t["term"].as_u64()), (Some(2), Some(7)));
        let lag = &t["lag"][0];
        assert_eq!(
            (lag["region"].as_str(), lag["writes"].as_u64(), lag["bytes"].as_u64()),
            (Some("us-east"), Some(3), Some(48 << 20))
        );
        assert_eq!(lag["seconds"].as_f64(), Some(1.5));
        assert_eq!((t["rpo_target_ms"].as_u64(), t["on_lag"].as_str()), (Some(1_000), Some("degrade")));
        assert_eq!(t["learners"][0], "us-east-1");
        assert_eq!(t["regions"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn no_meta_leader_is_null_in_json_and_named_in_the_table() {
        let mut r = sample();
        r.meta_leader.clear();
        let v: serde_json::Value = serde_json::from_str(&render_json(&r)).expect("json");
        assert!(v["meta_leader"].is_null());
        assert!(render_table(&r).starts_with("meta leader: (none)\n"));
    }

    #[test]
    fn the_table_shows_down_nodes_and_lag() {
        let text = render_table(&sample());
        assert!(text.contains("us-east-1     us-east     DOWN"), "{text}");
        assert!(text.contains("never"), "{text}");
        assert!(text.contains("0.2s ago") || text.contains("0.3s ago"), "{text}");
        assert!(text.contains("acme    us-east  3           48.0 MiB   1.500  OVER RPO TARGET 1s"), "{text}");
    }

    #[test]
    fn the_table_shows_mode_state_and_epoch_and_warns_about_degraded_tenants() {
        let text = render_table(&sample());
        assert!(
            text.contains("acme    near-sync  DEGRADED  2      eu-central-1  7     eu-central  1s          degrade"),
            "{text}"
        );
        assert!(text.contains("WARNING: tenant acme is degraded"), "{text}");
        assert!(text.contains("WARNING: tenant acme lags more than its rpo target 1s in us-east"), "{text}");
        let mut r = sample();
        let t = &mut r.tenants[0];
        (t.state, t.leader, t.lag, t.mode) = ("healthy".into(), String::new(), vec![], "async".into());
        let text = render_table(&r);
        assert!(text.contains("acme    async  healthy  2      (none)  7     eu-central  -           -"), "{text}");
        assert!(text.contains("acme    -       unknown (no leader answered)"), "{text}");
        assert!(text.contains("WARNING: tenant acme has no leader"), "{text}");
        assert!(!text.contains("degraded"), "{text}");
    }
}
