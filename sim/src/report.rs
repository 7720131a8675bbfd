//! The HTML report of one run (`tetrad-sim run --report FILE.html`): one self-contained page with
//! inline SVG, no scripts or external files. A timeline of every node's state grouped by region
//! (with region cuts and a flaky WAN drawn over it), the tenant's leader over time with its
//! failovers, replication lag per region, acked and lost writes; then the fault log, the
//! violations and the lost writes as text.

use std::fmt::Write;

use tetrad_node::seams::net::NodeId;

use crate::cluster::REGIONS;
use crate::run::RunReport;

const WIDTH: f64 = 1300.0;
const LEFT: f64 = 150.0;
const RIGHT: f64 = 20.0;
const ROW: f64 = 16.0;
const REGION_COLORS: [&str; 4] = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn node_name(id: NodeId) -> String {
    let r = (id / 100).saturating_sub(1) as usize;
    REGIONS.get(r).map(|r| format!("{r}-{}", id % 100)).unwrap_or_else(|| id.to_string())
}

fn region_of(id: NodeId) -> usize {
    ((id / 100).saturating_sub(1) as usize).min(REGIONS.len() - 1)
}

fn state_color(s: &str) -> &'static str {
    match s {
        "up" => "#cfe8cf",
        "crashed" => "#d62728",
        "stopped" => "#999999",
        "paused" => "#8c564b",
        "wiped" => "#000000",
        "replaced" => "#555555",
        _ => "#ffffff",
    }
}

struct Scale {
    end_ms: f64,
}

impl Scale {
    fn x(&self, ms: u64) -> f64 {
        LEFT + (ms as f64 / self.end_ms).min(1.0) * (WIDTH - LEFT - RIGHT)
    }
}

/// Turns (at, value) changes into spans [from, to) ending at `end`.
fn spans<T: Clone>(changes: &[(u64, T)], end: u64) -> Vec<(u64, u64, T)> {
    let mut out = vec![];
    for (i, (at, v)) in changes.iter().enumerate() {
        let to = changes.get(i + 1).map(|c| c.0).unwrap_or(end);
        if to > *at {
            out.push((*at, to, v.clone()));
        }
    }
    out
}

fn axis(svg: &mut String, s: &Scale, y: f64, h: f64) {
    let step = if s.end_ms > 120_000.0 {
        20_000
    } else if s.end_ms > 40_000.0 {
        10_000
    } else {
        5_000
    };
    let mut t = 0u64;
    while (t as f64) <= s.end_ms {
        let x = s.x(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#666">{}s</text>"##,
            y + h,
            y + h + 12.0,
            t / 1000
        );
        t += step;
    }
}

/// The timeline SVG.
fn timeline_svg(r: &RunReport) -> String {
    let d = &r.timeline;
    let last_event = d.log.last().map(|(t, _)| *t).unwrap_or(0);
    let end = r.duration_ms.max(last_event).max(r.acks.last().map(|a| a.acked_at_ms).unwrap_or(0)) + 1_000;
    let s = Scale { end_ms: end as f64 };
    let mut ids: Vec<NodeId> = d.node_states.iter().map(|(_, id, _)| *id).collect();
    ids.sort();
    ids.dedup();
    let mut svg = String::new();
    let mut y = 20.0;
    let _ = write!(svg, r##"<text x="4" y="{:.1}" font-size="12" font-weight="bold">nodes</text>"##, y - 6.0);
    let top = y;
    for (ri, region) in REGIONS.iter().enumerate() {
        let members: Vec<NodeId> = ids.iter().copied().filter(|id| region_of(*id) == ri).collect();
        if members.is_empty() {
            continue;
        }
        let region_top = y;
        for id in &members {
            let changes: Vec<(u64, String)> =
                d.node_states.iter().filter(|(_, n, _)| n == id).map(|(t, _, st)| (*t, st.clone())).collect();
            for (from, to, st) in spans(&changes, end) {
                let _ = write!(
                    svg,
                    r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {st} {:.1}s-{:.1}s</title></rect>"##,
                    s.x(from),
                    (s.x(to) - s.x(from)).max(1.0),
                    ROW - 3.0,
                    state_color(&st),
                    node_name(*id),
                    from as f64 / 1000.0,
                    to as f64 / 1000.0
                );
            }
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
                LEFT - 4.0,
                y + 10.0,
                node_name(*id)
            );
            y += ROW;
        }
        // Cuts of this region, drawn over its rows.
        let changes: Vec<(u64, Option<String>)> =
            d.region_cuts.iter().filter(|(_, r, _)| *r == ri).map(|(t, _, c)| (*t, c.clone())).collect();
        for (from, to, cut) in spans(&changes, end) {
            if let Some(cut) = cut {
                let _ = write!(
                    svg,
                    r##"<rect x="{:.1}" y="{region_top:.1}" width="{:.1}" height="{:.1}" fill="url(#cut)" stroke="#e377c2"><title>{region} cut off ({cut}) {:.1}s-{:.1}s</title></rect><text x="{:.1}" y="{:.1}" font-size="10" fill="#a0306f">cut {cut}</text>"##,
                    s.x(from),
                    (s.x(to) - s.x(from)).max(1.0),
                    y - region_top - 3.0,
                    from as f64 / 1000.0,
                    to as f64 / 1000.0,
                    s.x(from) + 3.0,
                    region_top + 10.0
                );
            }
        }
        let _ = write!(
            svg,
            r##"<rect x="2" y="{region_top:.1}" width="5" height="{:.1}" fill="{}"/>"##,
            y - region_top - 3.0,
            REGION_COLORS[ri]
        );
        y += 4.0;
    }
    // The network.
    let _ =
        write!(svg, r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">WAN</text>"##, LEFT - 4.0, y + 10.0);
    for (from, to, what) in spans(&d.net, end) {
        if let Some(what) = what {
            let _ = write!(
                svg,
                r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#f2c94c"><title>{}</title></rect>"##,
                s.x(from),
                (s.x(to) - s.x(from)).max(1.0),
                ROW - 3.0,
                esc(&what)
            );
        }
    }
    y += ROW;
    let nodes_bottom = y;
    // The tenant's leader.
    y += 10.0;
    let _ = write!(svg, r##"<text x="4" y="{:.1}" font-size="12" font-weight="bold">leader</text>"##, y + 10.0);
    let changes: Vec<(u64, (Option<NodeId>, u64))> = d.leaders.iter().map(|(t, l, term)| (*t, (*l, *term))).collect();
    for (from, to, (leader, term)) in spans(&changes, end) {
        let (fill, label) = match leader {
            Some(l) => (REGION_COLORS[region_of(l)], node_name(l)),
            None => ("#ffffff", "none".to_string()),
        };
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}" stroke="#333" stroke-width="0.3"><title>leader {label} term {term} {:.1}s-{:.1}s</title></rect>"##,
            s.x(from),
            (s.x(to) - s.x(from)).max(1.0),
            ROW,
            from as f64 / 1000.0,
            to as f64 / 1000.0
        );
        if s.x(to) - s.x(from) > 70.0 {
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="white">{label} t{term}</text>"##,
                s.x(from) + 3.0,
                y + 11.0
            );
        }
    }
    let failovers = d.leaders.windows(2).filter(|w| w[0].1.is_some() && w[1].1 != w[0].1).count();
    y += ROW + 6.0;
    // Lag per region.
    let lag_h = 90.0;
    y += 14.0;
    let _ = write!(svg, r##"<text x="4" y="{:.1}" font-size="12" font-weight="bold">lag (writes)</text>"##, y + 10.0);
    let max_lag = d.lag.iter().flat_map(|s| s.regions.iter().map(|x| x.1)).max().unwrap_or(0).max(1) as f64;
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{max_lag}</text>"##,
        LEFT - 4.0,
        y + 8.0
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{lag_h}" fill="none" stroke="#ccc"/>"##,
        WIDTH - LEFT - RIGHT
    );
    for (ri, region) in REGIONS.iter().enumerate() {
        let pts: Vec<String> = d
            .lag
            .iter()
            .filter_map(|smp| smp.regions.iter().find(|x| x.0 == *region).map(|x| (smp.at_ms, x.1)))
            .map(|(t, w)| format!("{:.1},{:.1}", s.x(t), y + lag_h - (w as f64 / max_lag) * lag_h))
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                svg,
                r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"><title>{region}</title></polyline>"##,
                pts.join(" "),
                REGION_COLORS[ri]
            );
        }
    }
    y += lag_h + 8.0;
    // Acked and lost writes.
    let ack_h = 90.0;
    y += 14.0;
    let _ = write!(svg, r##"<text x="4" y="{:.1}" font-size="12" font-weight="bold">acked writes</text>"##, y + 10.0);
    let total = r.acks.len().max(1) as f64;
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
        LEFT - 4.0,
        y + 8.0,
        r.acks.len()
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{ack_h}" fill="none" stroke="#ccc"/>"##,
        WIDTH - LEFT - RIGHT
    );
    let mut pts = vec![format!("{:.1},{:.1}", s.x(0), y + ack_h)];
    for (i, a) in r.acks.iter().enumerate() {
        pts.push(format!("{:.1},{:.1}", s.x(a.acked_at_ms), y + ack_h - ((i + 1) as f64 / total) * ack_h));
    }
    let _ = write!(svg, r##"<polyline points="{}" fill="none" stroke="#333" stroke-width="1.2"/>"##, pts.join(" "));
    for a in &r.lost_acks {
        let x = s.x(a.acked_at_ms);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#d62728" stroke-width="2"><title>lost: {} acked at {:.3}s by {}</title></line>"##,
            y + ack_h,
            esc(&a.name),
            a.acked_at_ms as f64 / 1000.0,
            node_name(a.by)
        );
    }
    y += ack_h;
    // Disruptions and their RTO, across everything.
    for (i, t) in d.disruptions.iter().enumerate() {
        let x = s.x(*t);
        let rto = r.acks.iter().find(|a| a.acked_at_ms > *t).map(|a| a.acked_at_ms - t);
        let label = rto.map(|v| format!("RTO {:.1}s", v as f64 / 1000.0)).unwrap_or_else(|| "no ack after".into());
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{y:.1}" stroke="#d62728" stroke-dasharray="4 3"><title>disruption {} at {:.1}s: {label}</title></line><text x="{:.1}" y="{:.1}" font-size="10" fill="#d62728">{label}</text>"##,
            i + 1,
            *t as f64 / 1000.0,
            x + 2.0,
            nodes_bottom + 8.0
        );
    }
    axis(&mut svg, &s, y + 2.0, 0.0);
    let height = y + 22.0;
    let legend: String = [
        ("up", "up"),
        ("crashed", "crashed"),
        ("stopped", "stopped"),
        ("paused", "paused"),
        ("wiped", "wiped"),
        ("replaced", "re-initialised"),
    ]
    .iter()
    .map(|(k, label)| format!(r##"<span class="sw" style="background:{}"></span>{label} "##, state_color(k)))
    .collect();
    let regions: String = REGIONS
        .iter()
        .enumerate()
        .map(|(i, r)| format!(r##"<span class="sw" style="background:{}"></span>{r} "##, REGION_COLORS[i]))
        .collect();
    format!(
        r##"<p class="legend">{legend}<span class="sw cut"></span>region cut off <span class="sw" style="background:#f2c94c"></span>flaky WAN &nbsp; leader / lag colours: {regions} &nbsp; failovers: {failovers}</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" font-family="sans-serif">
<defs><pattern id="cut" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#e377c2" fill-opacity="0.45"/></pattern></defs>
{svg}</svg>"##
    )
}

/// The whole report page.
pub fn html(r: &RunReport) -> String {
    let verdict = if r.ok() { "all oracles held" } else { "VIOLATED" };
    let budget = match &r.budget_breach {
        None => "within the fault budget".to_string(),
        Some((t, why)) => {
            format!("beyond the fault budget from {:.1}s ({}); only safety checked", *t as f64 / 1000.0, esc(why))
        }
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<!doctype html><html><head><meta charset="utf-8"><title>tetrad-sim seed {seed}</title><style>
body{{font-family:sans-serif;margin:16px;color:#222}} h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:15px;margin:18px 0 6px}}
.ok{{color:#2a7d2a}} .bad{{color:#c0392b}} .legend{{font-size:12px}} .sw{{display:inline-block;width:11px;height:11px;margin:0 3px 0 8px;vertical-align:middle;border:1px solid #999}}
.cut{{background:repeating-linear-gradient(45deg,#e377c2 0 3px,#fff 3px 6px)}} table{{border-collapse:collapse;font-size:12px}} td{{padding:1px 8px 1px 0;vertical-align:top}}
pre{{font-size:12px;background:#f6f6f6;padding:6px}}
</style></head><body>
<h1>tetrad-sim: seed {seed}, scenario {scenario}{plant}</h1>
<p><b class="{cls}">{verdict}</b> &middot; {budget} &middot; acked {acked}, lost {lost} &middot; simulated {sim:.1}s at {speed:.0}x &middot; trace {hash}</p>
"##,
        seed = r.seed,
        scenario = esc(&r.scenario),
        plant = r.plant.as_ref().map(|p| format!(", planted bug <code>{}</code>", esc(p))).unwrap_or_default(),
        cls = if r.ok() { "ok" } else { "bad" },
        acked = r.acked,
        lost = r.lost,
        sim = r.sim_secs,
        speed = r.sim_secs / r.wall_secs.max(1e-9),
        hash = &r.trace_hash[..r.trace_hash.len().min(16)],
    );
    out.push_str(&timeline_svg(r));
    if !r.violations.is_empty() {
        out.push_str("<h2 class=\"bad\">Violations</h2><pre>");
        for v in &r.violations {
            let _ = writeln!(out, "{}", esc(v));
        }
        out.push_str("</pre>");
    }
    if !r.rto_ms.is_empty() {
        let rto: Vec<String> = r.rto_ms.iter().map(|v| format!("{:.1}s", *v as f64 / 1000.0)).collect();
        let _ = write!(out, "<p>RTO per disruption: {}</p>", rto.join(", "));
    }
    out.push_str("<h2>Faults</h2><table>");
    for f in &r.faults {
        let (t, what) = f.split_once(' ').unwrap_or(("", f));
        let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(t), esc(what));
    }
    out.push_str("</table>");
    if !r.notes.is_empty() {
        out.push_str("<h2>Notes</h2><pre>");
        for n in &r.notes {
            let _ = writeln!(out, "{}", esc(n));
        }
        out.push_str("</pre>");
    }
    if !r.lost_acks.is_empty() {
        out.push_str("<h2>Lost acked writes</h2><table><tr><td><b>segment</b></td><td><b>acked at</b></td><td><b>by</b></td><td><b>term/index</b></td></tr>");
        for a in &r.lost_acks {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{:.3}s</td><td>{}</td><td>{}/{}</td></tr>",
                esc(&a.name),
                a.acked_at_ms as f64 / 1000.0,
                node_name(a.by),
                a.term,
                a.index
            );
        }
        out.push_str("</table>");
    }
    let _ = writeln!(out, "<h2>Oracles</h2><p>{}</p></body></html>", r.checked.join(", "));
    out
}
