//! `tetradctl tenant history`: a tenant's recorded failovers, switchovers, mode changes and state
//! changes, and the rendering of one event (the loss record a manual failover prints).
//!
//! JSON (stable; fields may be added; defined in `tetrad_proto::json::Event`): a list of events,
//! oldest first, each
//! `{"kind", "at", "from_epoch", "to_epoch", "rto_ms", "lost_writes_min", "lost_writes_max",
//! "loss_window_start", "loss_window_end", "detail", "divergent"}`. `kind` is one of `failover`,
//! `manual-failover`, `switchover`, `mode-change`, `degraded`, `healthy`; times are RFC 3339 UTC.
//! `rto_ms` is null until the new epoch's first ack; `lost_writes_max` is null until a majority
//! of the old epoch's voters have rejoined with intact storage; the loss window is null when
//! nothing can have been lost. `divergent` lists the old-epoch writes that returning replicas
//! hold and the new epoch lacks: `[{"node", "writes": [{"name", "term", "index", "proposed_at"}]}]`.

use tetrad_proto::json;
use tetrad_proto::v1::{DivergentTail, TenantEventInfo, TenantHistoryRequest};

use crate::client::Session;
use crate::exit::{gave_up, CmdResult, Op};
use crate::table::Table;
use crate::tenant::rfc3339_ms;

/// Divergent writes listed per node in the text forms; `--json` lists them all.
pub const TAIL_WRITES_SHOWN: usize = 10;

pub async fn history(session: &mut Session, name: &str) -> CmdResult<Vec<TenantEventInfo>> {
    session
        .unary(|mut c| {
            let req = TenantHistoryRequest { name: name.to_owned() };
            async move { c.tenant_history(req).await }
        })
        .await
        .map(|r| r.events)
        .map_err(|g| gave_up(Op::Other, &format!("history of tenant {name}"), g))
}

/// The printed form of an event (`tetrad_proto::json::Event`, where the shape is defined): times
/// as RFC 3339 UTC.
pub fn to_json(e: &TenantEventInfo) -> json::Event {
    json::Event {
        kind: e.kind.clone(),
        at: rfc3339_ms(e.at_ms),
        from_epoch: e.from_epoch,
        to_epoch: e.to_epoch,
        rto_ms: e.rto_ms,
        lost_writes_min: e.lost_writes_min,
        lost_writes_max: e.lost_writes_max,
        loss_window_start: e.loss_window_start_ms.map(rfc3339_ms),
        loss_window_end: e.loss_window_end_ms.map(rfc3339_ms),
        detail: e.detail.clone(),
        divergent: e
            .divergent
            .iter()
            .map(|d| json::DivergentTail {
                node: d.node.clone(),
                writes: d
                    .writes
                    .iter()
                    .map(|w| json::TailWrite {
                        name: w.name.clone(),
                        term: w.term,
                        index: w.index,
                        proposed_at: rfc3339_ms(w.proposed_at_ms),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// One event as JSON (what `switchover --json` and `failover --json` print).
pub fn render_event_json(e: &TenantEventInfo) -> String {
    serde_json::to_string_pretty(&to_json(e)).expect("event JSON always serializes")
}

/// The history as JSON: a list of events, oldest first.
pub fn render_history_json(events: &[TenantEventInfo]) -> String {
    let list: Vec<json::Event> = events.iter().map(to_json).collect();
    serde_json::to_string_pretty(&list).expect("event JSON always serializes")
}

/// Whether the event started a new epoch by promotion, so that writes can have been lost.
fn is_failover(e: &TenantEventInfo) -> bool {
    e.kind == "failover" || e.kind == "manual-failover"
}

fn epochs(e: &TenantEventInfo) -> String {
    if e.from_epoch == e.to_epoch {
        e.to_epoch.to_string()
    } else {
        format!("{} -> {}", e.from_epoch, e.to_epoch)
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.3}s", ms as f64 / 1000.0)
}

fn rto(e: &TenantEventInfo) -> String {
    match e.rto_ms {
        Some(ms) => seconds(ms),
        None if is_failover(e) => "pending".to_owned(),
        None => "-".to_owned(),
    }
}

/// The count of lost acked writes as a range: `0`, `3-5`, `>= 3 (max pending)`.
fn lost_writes(e: &TenantEventInfo) -> String {
    match (e.lost_writes_min, e.lost_writes_max) {
        (Some(min), Some(max)) if min == max => min.to_string(),
        (Some(min), Some(max)) => format!("{min}-{max}"),
        (Some(min), None) => format!(">= {min} (max pending)"),
        (None, Some(max)) => format!("<= {max}"),
        (None, None) if is_failover(e) => "unknown".to_owned(),
        (None, None) => "-".to_owned(),
    }
}

/// The loss window as its start and length, e.g. `2024-05-01T12:00:01.100Z +1.200s`.
fn loss_window(e: &TenantEventInfo) -> String {
    match (e.loss_window_start_ms, e.loss_window_end_ms) {
        (Some(start), Some(end)) => format!("{} +{}", rfc3339_ms(start), seconds(end.saturating_sub(start))),
        (Some(start), None) => format!("from {}", rfc3339_ms(start)),
        (None, Some(end)) => format!("until {}", rfc3339_ms(end)),
        (None, None) => "-".to_owned(),
    }
}

fn divergent_lines(out: &mut String, tails: &[DivergentTail], indent: &str) {
    for d in tails {
        let n = d.writes.len();
        out.push_str(&format!("{indent}{}: {n} write{}\n", d.node, if n == 1 { "" } else { "s" }));
        for w in d.writes.iter().take(TAIL_WRITES_SHOWN) {
            out.push_str(&format!(
                "{indent}  {} (term {}, index {}, proposed {})\n",
                w.name,
                w.term,
                w.index,
                rfc3339_ms(w.proposed_at_ms)
            ));
        }
        if n > TAIL_WRITES_SHOWN {
            out.push_str(&format!("{indent}  ... and {} more (see --json)\n", n - TAIL_WRITES_SHOWN));
        }
    }
}

/// The history as a table, oldest first, then the divergent tails of the events that have any.
pub fn render_history(tenant: &str, events: &[TenantEventInfo]) -> String {
    if events.is_empty() {
        return format!("no events recorded for tenant {tenant}\n");
    }
    let mut table = Table::new(["AT", "KIND", "EPOCH", "RTO", "LOST WRITES", "LOSS WINDOW", "DETAIL"]);
    for e in events {
        table.row([
            rfc3339_ms(e.at_ms),
            e.kind.clone(),
            epochs(e),
            rto(e),
            lost_writes(e),
            loss_window(e),
            e.detail.clone(),
        ]);
    }
    let mut out = table.render();
    for e in events.iter().filter(|e| !e.divergent.is_empty()) {
        out.push_str(&format!(
            "\ndivergent tails of the {} at {} (epoch {}), kept aside on the old epoch's replicas:\n",
            e.kind,
            rfc3339_ms(e.at_ms),
            epochs(e)
        ));
        divergent_lines(&mut out, &e.divergent, "  ");
    }
    out
}

/// One event in full, for an operator who just ran a switchover or a manual failover: what
/// happened and, for a failover, the loss record with what is still to come.
pub fn render_event(tenant: &str, e: &TenantEventInfo) -> String {
    let mut out = format!("{} of tenant {tenant}: epoch {}\n", e.kind, epochs(e));
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<16}{value}\n"));
    line("at", rfc3339_ms(e.at_ms));
    if !e.detail.is_empty() {
        line("detail", e.detail.clone());
    }
    if is_failover(e) || e.lost_writes_min.is_some() || e.loss_window_start_ms.is_some() {
        let max_note = match (e.lost_writes_max, e.old_voters.is_empty()) {
            (Some(_), _) => String::new(),
            (None, true) => "; the most is known once a majority of the old epoch's voters rejoin".to_owned(),
            (None, false) => format!(
                "; the most is known once a majority of the old epoch's voters ({}) rejoin",
                e.old_voters.join(", ")
            ),
        };
        let lost = match (e.lost_writes_min, e.lost_writes_max) {
            (Some(min), Some(max)) if min == max => format!("{min} acked writes"),
            (Some(min), Some(max)) => format!("between {min} and {max} acked writes"),
            (Some(min), None) => format!("at least {min} acked writes{max_note}"),
            (None, Some(max)) => format!("at most {max} acked writes"),
            (None, None) => format!("unknown{max_note}"),
        };
        line("lost writes", lost);
        let window = match (e.loss_window_start_ms, e.loss_window_end_ms) {
            (Some(start), Some(end)) => format!(
                "{} to {} ({}): every lost acked write was acked inside it",
                rfc3339_ms(start),
                rfc3339_ms(end),
                seconds(end.saturating_sub(start))
            ),
            (None, None) => "none: nothing acked can have been lost".to_owned(),
            _ => loss_window(e),
        };
        line("loss window", window);
        line(
            "rto",
            e.rto_ms.map(seconds).unwrap_or_else(|| "pending (the new epoch has not acked a write yet)".into()),
        );
    }
    if !e.divergent.is_empty() {
        out.push_str("  divergent tails kept aside on the old epoch's replicas:\n");
        divergent_lines(&mut out, &e.divergent, "    ");
    }
    out.push_str(&format!("  see `tetradctl tenant history {tenant}` for updates to this record\n"));
    out
}

#[cfg(test)]
mod tests {
    use tetrad_proto::v1::TailWriteInfo;

    use super::*;

    /// 2023-11-14T22:13:20.000Z
    const T0: u64 = 1_700_000_000_000;

    fn failover() -> TenantEventInfo {
        TenantEventInfo {
            kind: "manual-failover".into(),
            at_ms: T0 + 5_000,
            from_epoch: 1,
            to_epoch: 2,
            rto_ms: None,
            lost_writes_min: Some(3),
            lost_writes_max: None,
            loss_window_start_ms: Some(T0 + 1_100),
            loss_window_end_ms: Some(T0 + 2_300),
            old_voters: vec!["eu-central-1".into(), "eu-central-2".into(), "eu-central-3".into()],
            divergent: vec![],
            detail: "promoted us-east-1".into(),
        }
    }

    fn mode_change() -> TenantEventInfo {
        TenantEventInfo {
            kind: "mode-change".into(),
            at_ms: T0,
            from_epoch: 1,
            to_epoch: 1,
            detail: "sync -> near-sync".into(),
            ..Default::default()
        }
    }

    #[test]
    fn history_json_is_a_list_of_events_with_exactly_the_documented_fields() {
        let mut healed = failover();
        healed.lost_writes_max = Some(5);
        healed.rto_ms = Some(4_200);
        healed.divergent = vec![DivergentTail {
            node: "eu-central-1".into(),
            writes: vec![TailWriteInfo { name: "seg-9".into(), term: 4, index: 17, proposed_at_ms: T0 + 2_000 }],
        }];
        let v: serde_json::Value =
            serde_json::from_str(&render_history_json(&[mode_change(), failover(), healed])).expect("json");
        let events = v.as_array().expect("a list");
        assert_eq!(events.len(), 3);
        for e in events {
            let mut keys: Vec<&str> = e.as_object().expect("object").keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "at",
                    "detail",
                    "divergent",
                    "from_epoch",
                    "kind",
                    "loss_window_end",
                    "loss_window_start",
                    "lost_writes_max",
                    "lost_writes_min",
                    "rto_ms",
                    "to_epoch"
                ]
            );
        }
        assert_eq!(events[0]["kind"], "mode-change");
        assert_eq!(events[0]["at"], "2023-11-14T22:13:20.000Z");
        for key in ["rto_ms", "lost_writes_min", "lost_writes_max", "loss_window_start", "loss_window_end"] {
            assert!(events[0][key].is_null(), "{key}");
        }
        let f = &events[1];
        assert_eq!(
            (f["kind"].as_str(), f["from_epoch"].as_u64(), f["to_epoch"].as_u64()),
            (Some("manual-failover"), Some(1), Some(2))
        );
        assert_eq!(f["lost_writes_min"].as_u64(), Some(3));
        assert!(f["lost_writes_max"].is_null() && f["rto_ms"].is_null());
        assert_eq!(f["loss_window_start"], "2023-11-14T22:13:21.100Z");
        assert_eq!(f["loss_window_end"], "2023-11-14T22:13:22.300Z");
        let h = &events[2];
        assert_eq!((h["lost_writes_max"].as_u64(), h["rto_ms"].as_u64()), (Some(5), Some(4_200)));
        assert_eq!(h["divergent"][0]["node"], "eu-central-1");
        assert_eq!(h["divergent"][0]["writes"][0]["name"], "seg-9");
        assert_eq!(h["divergent"][0]["writes"][0]["proposed_at"], "2023-11-14T22:13:22.000Z");
    }

    #[test]
    fn an_empty_history_is_an_empty_json_list() {
        assert_eq!(render_history_json(&[]), "[]");
    }

    #[test]
    fn the_table_shows_the_loss_range_window_and_pending_parts() {
        let mut healed = failover();
        healed.lost_writes_max = Some(5);
        healed.rto_ms = Some(4_200);
        let text = render_history("acme", &[mode_change(), failover(), healed]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("AT  ") && lines[0].contains("LOST WRITES"), "{text}");
        assert!(lines[1].contains("mode-change") && lines[1].contains("sync -> near-sync"), "{text}");
        assert!(lines[2].contains("1 -> 2") && lines[2].contains("pending") && lines[2].contains(">= 3 (max pending)"));
        assert!(lines[2].contains("2023-11-14T22:13:21.100Z +1.200s"), "{text}");
        assert!(lines[3].contains("4.200s") && lines[3].contains(" 3-5 "), "{text}");
        assert_eq!(render_history("acme", &[]), "no events recorded for tenant acme\n");
    }

    #[test]
    fn divergent_tails_are_listed_with_a_limit() {
        let mut e = failover();
        e.divergent = vec![DivergentTail {
            node: "eu-central-2".into(),
            writes: (0..13)
                .map(|i| TailWriteInfo { name: format!("seg-{i}"), term: 4, index: 20 + i, proposed_at_ms: T0 })
                .collect(),
        }];
        let text = render_history("acme", &[e.clone()]);
        assert!(text.contains("eu-central-2: 13 writes"), "{text}");
        assert!(text.contains("seg-9 (term 4, index 29"), "{text}");
        assert!(!text.contains("seg-10 "), "{text}");
        assert!(text.contains("... and 3 more (see --json)"), "{text}");
        assert!(render_event("acme", &e).contains("eu-central-2: 13 writes"));
    }

    #[test]
    fn the_loss_record_says_what_is_known_and_what_is_still_to_come() {
        let text = render_event("acme", &failover());
        assert!(text.starts_with("manual-failover of tenant acme: epoch 1 -> 2\n"), "{text}");
        assert!(
            text.contains("at least 3 acked writes; the most is known once a majority of the old epoch's voters (eu-central-1, eu-central-2, eu-central-3) rejoin"),
            "{text}"
        );
        assert!(
            text.contains("2023-11-14T22:13:21.100Z to 2023-11-14T22:13:22.300Z (1.200s): every lost acked write"),
            "{text}"
        );
        assert!(text.contains("rto             pending"), "{text}");
        let mut clean = failover();
        (clean.lost_writes_min, clean.lost_writes_max) = (Some(0), Some(0));
        (clean.loss_window_start_ms, clean.loss_window_end_ms) = (None, None);
        let text = render_event("acme", &clean);
        assert!(text.contains("lost writes     0 acked writes\n") && text.contains("none: nothing acked"), "{text}");
        clean.lost_writes_max = Some(2);
        assert!(render_event("acme", &clean).contains("between 0 and 2 acked writes"));
    }

    #[test]
    fn a_switchover_prints_no_loss_record() {
        let e = TenantEventInfo {
            kind: "switchover".into(),
            at_ms: T0,
            from_epoch: 3,
            to_epoch: 3,
            detail: "eu-central -> us-east".into(),
            ..Default::default()
        };
        let text = render_event("acme", &e);
        assert!(text.starts_with("switchover of tenant acme: epoch 3\n"), "{text}");
        assert!(text.contains("eu-central -> us-east") && !text.contains("lost writes"), "{text}");
    }
}
