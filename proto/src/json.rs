//! The JSON that `tetradctl` prints (`--json`), defined once: tetradctl serializes these types
//! and the tests (and any operator's program written in Rust) deserialize the same ones.
//!
//! This is a wire format like the gRPC messages beside it, with the same promise (ops/README.md,
//! "JSON"): fields may be added, never renamed or removed, and no value changes its spelling.
//! Serialization writes the fields in the order they are declared here, which is the order
//! tetradctl has always printed; a reader ignores fields it does not know, so an older reader
//! keeps working when a field is added. The tests at the bottom pin every field name.
//!
//! Values that the gRPC API carries as strings stay strings here (`mode`, `state`, `on_lag`,
//! `kind`): tetradctl prints what the cluster answered, so a value a newer node adds reaches the
//! operator instead of failing the command. Their documented spellings are listed on each field.
//!
//! | command | prints |
//! |---|---|
//! | `status --json` | [`Status`] |
//! | `tenant show|create|set-mode --json` | [`Tenant`] |
//! | `tenant list --json` | [`TenantList`] |
//! | `tenant history --json` | a list of [`Event`]s, oldest first |
//! | `tenant switchover|failover --json` | one [`Event`] |
//! | `wal list --json` | [`SegmentList`] |
//! | `verify --json` | [`Verify`] |
//! | `audit --json` | [`Audit`] |

use serde::{Deserialize, Serialize};

/// `tetradctl status --json`: the cluster's nodes, meta leader and tenants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub nodes: Vec<Node>,
    /// Null while no meta leader is known.
    pub meta_leader: Option<String>,
    pub tenants: Vec<TenantStatus>,
}

/// One node in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's name, e.g. `eu-central-1`.
    pub id: String,
    pub region: String,
    pub up: bool,
    pub api_addr: String,
    /// Null when the node was never heard from.
    pub last_heartbeat_ago_ms: Option<u64>,
}

/// One tenant in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub name: String,
    /// `sync`, `near-sync` or `async`.
    pub mode: String,
    /// `healthy`, `degraded` or `catching-up`.
    pub state: String,
    pub epoch: u64,
    /// Empty while no leader is known.
    pub leader: String,
    pub term: u64,
    pub primary: String,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub segments: u64,
    /// 0 when no target is set.
    pub rpo_target_ms: u64,
    /// `block` or `degrade`.
    pub on_lag: String,
    /// Empty when the tenant may live anywhere.
    pub regions: Vec<String>,
    /// What the tenant's leader reports per region (the best replica there); empty while no
    /// leader answers.
    pub lag: Vec<Lag>,
}

/// A tenant's lag in one region, in [`TenantStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    pub region: String,
    pub writes: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// `tetradctl tenant show|create|set-mode --json`: one tenant's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    /// `sync`, `near-sync` or `async`.
    pub mode: String,
    pub primary: String,
    pub epoch: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// `healthy`, `degraded` or `catching-up`.
    pub state: String,
    pub created_at_ms: u64,
    /// Empty while no leader is known.
    pub leader: String,
    pub term: u64,
    /// 0 when no target is set.
    pub rpo_target_ms: u64,
    /// `block` or `degrade`.
    pub on_lag: String,
    /// Empty when the tenant may live anywhere.
    pub regions: Vec<String>,
}

/// `tetradctl tenant list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

/// One event of a tenant's history (`tenant history --json` prints a list of them, oldest first;
/// `tenant switchover --json` and `tenant failover --json` print one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `failover`, `manual-failover`, `switchover`, `mode-change`, `degraded` or `healthy`.
    pub kind: String,
    /// RFC 3339 UTC with milliseconds, e.g. `2023-11-14T22:13:20.123Z`.
    pub at: String,
    pub from_epoch: u64,
    pub to_epoch: u64,
    /// Null until the new epoch's first ack.
    pub rto_ms: Option<u64>,
    pub lost_writes_min: Option<u64>,
    /// Null until a majority of the old epoch's voters have rejoined with intact storage.
    pub lost_writes_max: Option<u64>,
    /// RFC 3339 UTC; the window is null when nothing can have been lost.
    pub loss_window_start: Option<String>,
    pub loss_window_end: Option<String>,
    pub detail: String,
    /// The old-epoch writes that returning replicas keep aside and the new epoch lacks.
    pub divergent: Vec<DivergentTail>,
}

/// One returning replica's divergent tail, in [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergentTail {
    pub node: String,
    pub writes: Vec<TailWrite>,
}

/// One write of a [`DivergentTail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailWrite {
    pub name: String,
    pub term: u64,
    pub index: u64,
    /// RFC 3339 UTC with milliseconds.
    pub proposed_at: String,
}

/// `tetradctl wal list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentList {
    pub segments: Vec<Segment>,
}

/// One segment of a tenant's WAL archive, in [`SegmentList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub size: u64,
    /// Hex.
    pub blake3: String,
    pub proposed_at_ms: u64,
}

/// `tetradctl verify --tenant T --json`: what each member of the tenant's current epoch holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verify {
    pub tenant: String,
    /// True only when every member was reached and holds every chunk whole (after repairs):
    /// the command then exits 0.
    pub ok: bool,
    pub members: Vec<VerifyMember>,
}

/// One member in [`Verify`]. `missing + damaged = repaired + unrepaired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyMember {
    pub member: String,
    pub reachable: bool,
    /// Why the member is unreachable; null when it was reached.
    pub error: Option<String>,
    pub checked: u64,
    /// Bytes of the chunks found intact.
    pub bytes: u64,
    pub missing: u64,
    pub damaged: u64,
    pub repaired: u64,
    pub unrepaired: u64,
}

impl Status {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == name)
    }

    /// The tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantStatus> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The region a node is in, from the node list.
    pub fn region_of(&self, node: &str) -> Option<&str> {
        self.node(node).map(|n| n.region.as_str())
    }

    /// The names of the nodes that are not up, in list order.
    pub fn down_nodes(&self) -> Vec<&str> {
        self.nodes.iter().filter(|n| !n.up).map(|n| n.id.as_str()).collect()
    }
}

impl TenantStatus {
    /// The tenant's lag in `region`, if its leader reported one.
    pub fn lag_of(&self, region: &str) -> Option<&Lag> {
        self.lag.iter().find(|l| l.region == region)
    }

    /// `region: N writes` for every region, comma-separated, for messages.
    pub fn lag_summary(&self) -> String {
        self.lag.iter().map(|l| format!("{}: {} writes", l.region, l.writes)).collect::<Vec<_>>().join(", ")
    }
}

/// `tetradctl audit --json`: the meta group's audit log, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub entries: Vec<AuditEntry>,
    /// Entries dropped by retention since the cluster began (the oldest go first).
    pub dropped: u64,
    pub retained_max: u64,
}

/// One admin action or refused request, or identical refusals coalesced (`count` > 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds: the (first) request.
    pub at: String,
    /// RFC 3339 UTC: the last request this entry stands for.
    pub last_at: String,
    /// The node that served the request.
    pub node: String,
    /// The certificate's common name; `<unauthenticated>` when none could be read.
    pub subject: String,
    pub role: String,
    pub peer: String,
    /// The RPC, e.g. `FailoverTenant`.
    pub action: String,
    /// Null when the request concerned no tenant.
    pub tenant: Option<String>,
    /// `done`, `failed` or `refused`.
    pub outcome: String,
    pub detail: String,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    //! These pin the printed form: a renamed, removed or reordered field, or a changed spelling of
    //! null, fails here before it reaches an operator's script.

    use super::*;

    fn tenant() -> Tenant {
        Tenant {
            name: "acme".into(),
            mode: "near-sync".into(),
            primary: "eu-west".into(),
            epoch: 2,
            voters: vec!["eu-west-1".into()],
            learners: vec!["us-east-1".into()],
            state: "catching-up".into(),
            created_at_ms: 1_700_000_000_123,
            leader: String::new(),
            term: 7,
            rpo_target_ms: 1_000,
            on_lag: "degrade".into(),
            regions: vec![],
        }
    }

    fn event() -> Event {
        Event {
            kind: "manual-failover".into(),
            at: "2023-11-14T22:13:25.000Z".into(),
            from_epoch: 1,
            to_epoch: 2,
            rto_ms: None,
            lost_writes_min: Some(3),
            lost_writes_max: None,
            loss_window_start: Some("2023-11-14T22:13:21.100Z".into()),
            loss_window_end: None,
            detail: "promoted us-east-1".into(),
            divergent: vec![DivergentTail {
                node: "eu-central-1".into(),
                writes: vec![TailWrite {
                    name: "seg-9".into(),
                    term: 4,
                    index: 17,
                    proposed_at: "2023-11-14T22:13:22.000Z".into(),
                }],
            }],
        }
    }

    fn status() -> Status {
        Status {
            nodes: vec![
                Node {
                    id: "eu-central-1".into(),
                    region: "eu-central".into(),
                    up: true,
                    api_addr: "127.0.0.1:4001".into(),
                    last_heartbeat_ago_ms: Some(120),
                },
                Node {
                    id: "us-east-1".into(),
                    region: "us-east".into(),
                    up: false,
                    api_addr: "127.0.0.1:4002".into(),
                    last_heartbeat_ago_ms: None,
                },
            ],
            meta_leader: None,
            tenants: vec![TenantStatus {
                name: "acme".into(),
                mode: "near-sync".into(),
                state: "degraded".into(),
                epoch: 2,
                leader: "eu-central-1".into(),
                term: 7,
                primary: "eu-central".into(),
                voters: vec!["eu-central-1".into()],
                learners: vec!["us-east-1".into()],
                segments: 9,
                rpo_target_ms: 1_000,
                on_lag: "degrade".into(),
                regions: vec!["eu-central".into(), "us-east".into()],
                lag: vec![Lag { region: "us-east".into(), writes: 3, bytes: 48, seconds: 1.5 }],
            }],
        }
    }

    fn printed<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("serializes")
    }

    /// Prints `value`, checks the text, and reads it back into an equal value.
    fn round_trip<T>(value: &T, want: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        assert_eq!(printed(value), want);
        let back: T = serde_json::from_str(want).expect("reads back");
        assert_eq!(&back, value);
    }

    #[test]
    fn verify_prints_the_documented_fields_in_order_with_nulls() {
        let m = |member: &str, reachable: bool, error: Option<&str>| VerifyMember {
            member: member.into(),
            reachable,
            error: error.map(Into::into),
            checked: 9,
            bytes: 4096,
            missing: 1,
            damaged: 2,
            repaired: 2,
            unrepaired: 1,
        };
        let v = Verify {
            tenant: "acme".into(),
            ok: false,
            members: vec![m("eu-west-1", true, None), m("us-east-1", false, Some("timed out"))],
        };
        round_trip(
            &v,
            concat!(
                r#"{"tenant":"acme","ok":false,"members":[{"member":"eu-west-1","reachable":true,"error":null,"checked":9,"#,
                r#""bytes":4096,"missing":1,"damaged":2,"repaired":2,"unrepaired":1},{"member":"us-east-1","reachable":false,"#,
                r#""error":"timed out","checked":9,"bytes":4096,"missing":1,"damaged":2,"repaired":2,"unrepaired":1}]}"#,
            ),
        );
    }

    #[test]
    fn audit_prints_the_documented_fields_in_order_with_nulls() {
        let a = Audit {
            entries: vec![AuditEntry {
                seq: 3,
                at: "2023-11-14T22:13:20.123Z".into(),
                last_at: "2023-11-14T22:13:21.000Z".into(),
                node: "eu-west-1".into(),
                subject: "acme-app".into(),
                role: "tenant:acme".into(),
                peer: "127.0.0.1".into(),
                action: "InitCluster".into(),
                tenant: None,
                outcome: "refused".into(),
                detail: "permission denied".into(),
                count: 2,
            }],
            dropped: 0,
            retained_max: 10000,
        };
        round_trip(
            &a,
            concat!(
                r#"{"entries":[{"seq":3,"at":"2023-11-14T22:13:20.123Z","last_at":"2023-11-14T22:13:21.000Z","#,
                r#""node":"eu-west-1","subject":"acme-app","role":"tenant:acme","peer":"127.0.0.1","action":"InitCluster","#,
                r#""tenant":null,"outcome":"refused","detail":"permission denied","count":2}],"dropped":0,"retained_max":10000}"#,
            ),
        );
    }

    #[test]
    fn status_prints_the_documented_fields_in_order() {
        round_trip(
            &status(),
            concat!(
                r#"{"nodes":[{"id":"eu-central-1","region":"eu-central","up":true,"api_addr":"127.0.0.1:4001","last_heartbeat_ago_ms":120},"#,
                r#"{"id":"us-east-1","region":"us-east","up":false,"api_addr":"127.0.0.1:4002","last_heartbeat_ago_ms":null}],"#,
                r#""meta_leader":null,"#,
                r#""tenants":[{"name":"acme","mode":"near-sync","state":"degraded","epoch":2,"leader":"eu-central-1","term":7,"#,
                r#""primary":"eu-central","voters":["eu-central-1"],"learners":["us-east-1"],"segments":9,"rpo_target_ms":1000,"#,
                r#""on_lag":"degrade","regions":["eu-central","us-east"],"lag":[{"region":"us-east","writes":3,"bytes":48,"seconds":1.5}]}]}"#,
            ),
        );
    }

    #[test]
    fn tenant_and_tenant_list_print_the_documented_fields_in_order() {
        let one = concat!(
            r#"{"name":"acme","mode":"near-sync","primary":"eu-west","epoch":2,"voters":["eu-west-1"],"#,
            r#""learners":["us-east-1"],"state":"catching-up","created_at_ms":1700000000123,"leader":"","term":7,"#,
            r#""rpo_target_ms":1000,"on_lag":"degrade","regions":[]}"#,
        );
        round_trip(&tenant(), one);
        round_trip(&TenantList { tenants: vec![tenant()] }, &format!(r#"{{"tenants":[{one}]}}"#));
        round_trip(&TenantList { tenants: vec![] }, r#"{"tenants":[]}"#);
    }

    #[test]
    fn an_event_prints_the_documented_fields_in_order_with_nulls() {
        round_trip(
            &event(),
            concat!(
                r#"{"kind":"manual-failover","at":"2023-11-14T22:13:25.000Z","from_epoch":1,"to_epoch":2,"rto_ms":null,"#,
                r#""lost_writes_min":3,"lost_writes_max":null,"loss_window_start":"2023-11-14T22:13:21.100Z","#,
                r#""loss_window_end":null,"detail":"promoted us-east-1","#,
                r#""divergent":[{"node":"eu-central-1","writes":[{"name":"seg-9","term":4,"index":17,"proposed_at":"2023-11-14T22:13:22.000Z"}]}]}"#,
            ),
        );
    }

    #[test]
    fn a_segment_list_prints_the_documented_fields_in_order() {
        let list = SegmentList {
            segments: vec![Segment {
                name: "000000010000000000000001".into(),
                size: 16 << 20,
                blake3: "ab".into(),
                proposed_at_ms: 5,
            }],
        };
        round_trip(
            &list,
            r#"{"segments":[{"name":"000000010000000000000001","size":16777216,"blake3":"ab","proposed_at_ms":5}]}"#,
        );
    }

    #[test]
    fn readers_ignore_fields_added_later() {
        let text = printed(&tenant()).replacen('{', r#"{"added_later":{"x":1},"#, 1);
        let read: Tenant = serde_json::from_str(&text).expect("an added field is ignored");
        assert_eq!(read, tenant());
    }

    #[test]
    fn readers_refuse_a_removed_field() {
        let text = printed(&event()).replace(r#""detail":"promoted us-east-1","#, "");
        let err = serde_json::from_str::<Event>(&text).expect_err("a removed field is an error");
        assert!(err.to_string().contains("detail"), "{err}");
    }

    #[test]
    fn lookups_find_nodes_tenants_and_lag() {
        let s = status();
        assert_eq!(s.region_of("us-east-1"), Some("us-east"));
        assert_eq!(s.down_nodes(), ["us-east-1"]);
        assert!(s.node("ap-south-1").is_none());
        let t = s.tenant("acme").expect("listed");
        assert_eq!(t.lag_of("us-east").map(|l| l.writes), Some(3));
        assert!(t.lag_of("eu-central").is_none());
        assert_eq!(t.lag_summary(), "us-east: 3 writes");
    }
}
