//! `tetradctl verify --tenant T [--json]`: every member of the tenant's current epoch checks
//! every chunk its catalog references and repairs what it can (issue #12). The node the command
//! reaches drives the members batch by batch and streams progress; the command's deadline
//! follows that progress (`--timeout` bounds each wait for a message, not the whole run).
//!
//! `--json` prints `tetrad_proto::json::Verify`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tetrad_proto::json;
use tetrad_proto::v1::verify_tenant_reply::Msg;
use tetrad_proto::v1::{VerifyCounts, VerifyMemberSummary, VerifyTenantRequest};
use tokio::time::{timeout, timeout_at};

use crate::client::Session;
use crate::exit::{gave_up, CmdError, CmdResult, Op, NO_ANSWER, VERIFY_FAILED};
use crate::failure::Failure;
use crate::table::{bytes, Table};

/// A member's batch may take up to 30 s (and one retry) on the node; the wait for the next
/// message is at least this long whatever `--timeout` says.
const MIN_MESSAGE_WAIT: Duration = Duration::from_secs(90);

/// Runs the verification; answers one summary per member, in the order the node sent them.
pub async fn verify(session: &mut Session, tenant: &str, wait: Duration) -> CmdResult<Vec<VerifyMemberSummary>> {
    let what = format!("verifying tenant {tenant}");
    let wait = wait.max(MIN_MESSAGE_WAIT);
    let show = std::io::stdout().is_terminal();
    // Reaching the cluster and starting the stream are bounded by the session's deadline;
    // once a node streams, each message has its own wait.
    let (addr, mut stream) = loop {
        let (addr, mut client) = session.connect().await.map_err(|g| gave_up(Op::Other, &what, g))?;
        let req = VerifyTenantRequest { tenant: tenant.to_owned() };
        match timeout_at(session.deadline(), client.verify_tenant(req)).await {
            Ok(Ok(r)) => break (addr, r.into_inner()),
            Ok(Err(status)) => {
                session.failed(Failure::from_status(&addr, &status)).map_err(|g| gave_up(Op::Other, &what, g))?
            }
            Err(_) => return Err(gave_up(Op::Other, &what, session.deadline_passed())),
        }
    };
    session.succeeded(&addr);
    let mut members = vec![];
    loop {
        let msg = match timeout(wait, stream.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => break,
            Ok(Err(status)) => {
                clear_line(show);
                return Err(CmdError::msg(NO_ANSWER, format!("{what}: node {addr} stopped: {}", status.message())));
            }
            Err(_) => {
                clear_line(show);
                return Err(CmdError::msg(
                    NO_ANSWER,
                    format!("{what}: node {addr} sent no progress for {}s", wait.as_secs()),
                ));
            }
        };
        match msg.msg {
            Some(Msg::Progress(p)) if show => {
                let c = p.so_far.unwrap_or_default();
                let pct = match p.expected_bytes {
                    0 => String::new(),
                    n => format!(" ({:.0}%)", (c.bytes as f64 / n as f64 * 100.0).min(100.0)),
                };
                let mut err = std::io::stderr();
                let _ = write!(
                    err,
                    "\r\x1b[2K{}: {} chunks, {}{pct}, {} repaired, {} unrepaired",
                    p.member,
                    c.checked,
                    bytes(c.bytes),
                    c.repaired,
                    c.unrepaired
                );
                let _ = err.flush();
            }
            Some(Msg::Progress(_)) => {}
            Some(Msg::Member(m)) => members.push(m),
            None => {}
        }
    }
    clear_line(show);
    if members.is_empty() {
        return Err(CmdError::msg(NO_ANSWER, format!("{what}: node {addr} ended the stream without a summary")));
    }
    Ok(members)
}

fn clear_line(show: bool) {
    if show {
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}

/// The printed form (`tetrad_proto::json::Verify`, where the shape is defined).
pub fn to_json(tenant: &str, members: &[VerifyMemberSummary]) -> json::Verify {
    let members: Vec<json::VerifyMember> = members
        .iter()
        .map(|m| {
            let c: VerifyCounts = m.counts.unwrap_or_default();
            json::VerifyMember {
                member: m.member.clone(),
                reachable: m.reachable,
                error: (!m.reachable).then(|| m.error.clone()),
                checked: c.checked,
                bytes: c.bytes,
                missing: c.missing,
                damaged: c.damaged,
                repaired: c.repaired,
                unrepaired: c.unrepaired,
            }
        })
        .collect();
    let ok = !members.is_empty() && members.iter().all(|m| m.reachable && m.unrepaired == 0);
    json::Verify { tenant: tenant.to_owned(), ok, members }
}

pub fn render(v: &json::Verify) -> String {
    let mut table = Table::new(["MEMBER", "STATE", "CHECKED", "BYTES", "MISSING", "DAMAGED", "REPAIRED", "UNREPAIRED"]);
    for m in &v.members {
        let state = match (m.reachable, m.unrepaired) {
            (false, _) => "unreachable",
            (true, 0) => "whole",
            (true, _) => "damaged",
        };
        table.row([
            m.member.clone(),
            state.to_owned(),
            m.checked.to_string(),
            bytes(m.bytes),
            m.missing.to_string(),
            m.damaged.to_string(),
            m.repaired.to_string(),
            m.unrepaired.to_string(),
        ]);
    }
    let mut out = table.render();
    for m in v.members.iter().filter(|m| !m.reachable) {
        out.push_str(&format!("{} unreachable: {}\n", m.member, m.error.as_deref().unwrap_or("")));
    }
    out
}

/// Exit 0 only when every member was reached and holds every chunk whole.
pub fn outcome(v: &json::Verify) -> CmdResult<()> {
    if v.ok {
        return Ok(());
    }
    let unreachable = v.members.iter().filter(|m| !m.reachable).count();
    let unrepaired: u64 = v.members.iter().map(|m| m.unrepaired).sum();
    Err(CmdError::msg(
        VERIFY_FAILED,
        format!(
            "tenant {} is not whole: {unreachable} member(s) unreachable, {unrepaired} chunk(s) missing or damaged and unrepaired",
            v.tenant
        ),
    ))
}
