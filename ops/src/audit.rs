//! `tetradctl audit`: the meta group's audit log (admin actions and refused requests), read
//! with the admin identity, filtered by tenant and time, as a table or JSON
//! (`tetrad_proto::json::Audit`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tetrad_proto::json;
use tetrad_proto::v1::{AuditEntryInfo, ListAuditReply, ListAuditRequest};

use crate::client::Session;
use crate::exit::{gave_up, CmdResult, Op};
use crate::table::Table;
use crate::tenant::rfc3339_ms;

/// `--since`: a duration before now (`1h`, `30m`) or an RFC 3339 time, as wall-clock ms.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let at = match humantime::parse_duration(s) {
        Ok(d) => SystemTime::now().checked_sub(d).ok_or_else(|| "reaches before 1970".to_string())?,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|_| "is neither a duration (1h, 30m) nor an RFC 3339 time (2026-01-02T03:04:05Z)".to_string())?,
    };
    Ok(at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64)
}

pub async fn audit(session: &mut Session, tenant: Option<&str>, since_ms: u64) -> CmdResult<ListAuditReply> {
    session
        .unary(|mut c| {
            let req = ListAuditRequest { tenant: tenant.unwrap_or_default().to_owned(), since_ms, limit: 0 };
            async move { c.list_audit(req).await }
        })
        .await
        .map_err(|g| gave_up(Op::Other, "reading the audit log", g))
}

fn entry_json(e: &AuditEntryInfo) -> json::AuditEntry {
    json::AuditEntry {
        seq: e.seq,
        at: rfc3339_ms(e.at_ms),
        last_at: rfc3339_ms(e.last_at_ms),
        node: e.node.clone(),
        subject: e.subject.clone(),
        role: e.role.clone(),
        peer: e.peer.clone(),
        action: e.action.clone(),
        tenant: (!e.tenant.is_empty()).then(|| e.tenant.clone()),
        outcome: e.outcome.clone(),
        detail: e.detail.clone(),
        count: e.count,
    }
}

pub fn to_json(r: &ListAuditReply) -> json::Audit {
    json::Audit {
        entries: r.entries.iter().map(entry_json).collect(),
        dropped: r.dropped,
        retained_max: r.retained_max,
    }
}

pub fn render_json(r: &ListAuditReply) -> String {
    serde_json::to_string_pretty(&to_json(r)).expect("audit JSON always serializes")
}

pub fn render(r: &ListAuditReply) -> String {
    let mut t = Table::new(["AT", "SUBJECT", "ROLE", "ACTION", "TENANT", "OUTCOME", "COUNT", "NODE", "DETAIL"]);
    for e in &r.entries {
        t.row([
            rfc3339_ms(e.at_ms),
            e.subject.clone(),
            e.role.clone(),
            e.action.clone(),
            if e.tenant.is_empty() { "-".into() } else { e.tenant.clone() },
            e.outcome.clone(),
            e.count.to_string(),
            e.node.clone(),
            e.detail.clone(),
        ]);
    }
    let mut out = t.render();
    if r.dropped > 0 {
        out.push_str(&format!(
            "({} older entries were dropped; the log keeps the newest {})\n",
            r.dropped, r.retained_max
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_time_and_refuses_anything_else() {
        assert_eq!(parse_since("2026-01-02T03:04:05Z"), Ok(1_767_323_045_000));
        let hour_ago = parse_since("1h").expect("duration");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("now").as_millis() as u64;
        assert!(now - hour_ago >= 3_600_000 && now - hour_ago < 3_700_000, "{}", now - hour_ago);
        assert!(parse_since("yesterday").expect_err("refused").contains("RFC 3339"));
    }

    #[test]
    fn an_entry_without_a_tenant_prints_null_and_the_table_notes_dropped_entries() {
        let r = ListAuditReply {
            entries: vec![AuditEntryInfo {
                seq: 4,
                at_ms: 1_000,
                last_at_ms: 2_000,
                node: "eu-west-1".into(),
                subject: "ops".into(),
                role: "admin".into(),
                peer: "127.0.0.1".into(),
                action: "InitCluster".into(),
                tenant: String::new(),
                outcome: "done".into(),
                detail: "initialized the cluster".into(),
                count: 1,
            }],
            dropped: 3,
            retained_max: 10,
        };
        let j = to_json(&r);
        assert_eq!(j.entries[0].tenant, None);
        assert_eq!(j.entries[0].last_at, "1970-01-01T00:00:02.000Z");
        let text = render(&r);
        assert!(text.contains("InitCluster") && text.contains("3 older entries were dropped"), "{text}");
    }
}
