//! The client API and the node port against callers who should not get in: no certificate, a
//! certificate of another CA, a client certificate on the node-to-node port, and tenant roles
//! reaching past their tenant or their rights. Each refusal is asserted by its code and message;
//! the admin identity `cluster up` made does all of the same things.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tetrad_node::config::NodeConfig;
use tetrad_node::net::quic::{PeerAddr, QuicConfig, QuicTransport};
use tetrad_node::seams::net::{NetError, RpcHandler, Transport};
use tetrad_node::tls::{CaBundle, Role};
use tetrad_ops::client::{endpoint, Identity};
use tetrad_proto::v1::tetrad_client::TetradClient;
use tetrad_proto::v1::*;
use tetrad_tests::grpc::{PushError, Pusher};
use tetrad_tests::segments::{segment_bytes, segment_name, write_segment};
use tetrad_tests::{LocalCluster, UpOptions};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;

const ALPHA: &str = "alpha";
const BETA: &str = "beta";
const BOUND: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn small_cluster() -> LocalCluster {
    LocalCluster::up(UpOptions { nodes_per_region: 1, ..UpOptions::default() })
}

fn api_addrs(cluster: &LocalCluster) -> Vec<String> {
    let status = cluster.status().expect("status");
    status.nodes.iter().map(|n| n.api_addr.clone()).collect()
}

/// `tetradctl certs issue NAME --role ROLE --out scratch/ids`, loaded.
fn issue(cluster: &LocalCluster, name: &str, role: &str) -> (PathBuf, Identity) {
    let out = cluster.scratch().join("ids");
    let ran = cluster.ctl(&["certs", "issue", name, "--role", role, "--out", out.to_str().expect("utf-8")]);
    ran.expect_success();
    let path = out.join(name);
    let identity = Identity::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
    (path, identity)
}

async fn dial(addr: &str, identity: &Identity) -> TetradClient<Channel> {
    let channel = endpoint(addr, identity).expect("endpoint").connect().await.expect("TLS connection");
    TetradClient::new(channel)
}

/// Asserts `status` is a node's refusal with `code`, whose message names every one of `words`.
fn assert_refused(what: &str, status: &tonic::Status, code: Code, words: &[&str]) {
    assert_eq!(status.code(), code, "{what}: {status:?}");
    let kind = status.metadata().get(tetrad_proto::ERROR_KIND_KEY).and_then(|v| v.to_str().ok());
    let want_kind = if code == Code::PermissionDenied { "permission-denied" } else { "unauthenticated" };
    assert_eq!(kind, Some(want_kind), "{what}: {status:?}");
    for w in words {
        assert!(status.message().contains(w), "{what}: {w:?} not in {:?}", status.message());
    }
}

fn cluster_ca(cluster: &LocalCluster) -> CaBundle {
    let read = |f: &str| std::fs::read_to_string(cluster.dir().join(f)).expect("CA file");
    CaBundle { cert_pem: read("ca.pem"), key_pem: read("ca.key") }
}

#[test]
fn the_api_requires_a_certificate_of_the_cluster_ca_and_the_node_port_a_node_role() {
    let cluster = small_cluster();
    let addrs = api_addrs(&cluster);
    let addr = addrs[0].clone();
    let admin = cluster.identity();
    let ca_pem = std::fs::read_to_string(cluster.dir().join("ca.pem")).expect("ca");
    let rt = runtime();

    // Plaintext, as every client spoke before: the TLS server gives it no answer.
    rt.block_on(async {
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
        let r = match plain.connect().await {
            Ok(ch) => TetradClient::new(ch).status(StatusRequest {}).await.map(|_| ()).map_err(|s| s.to_string()),
            Err(e) => Err(tetrad_ops::client::error_chain(&e)),
        };
        assert!(r.is_err(), "a plaintext client was answered");
    });

    // TLS that trusts the cluster CA but presents no certificate: the server ends the handshake
    // (TLS 1.3 lets the client finish its side first, so the refusal shows on the first request
    // as a broken connection). No request reaches the API: a node's own answer would carry
    // `tetrad-error` metadata (e.g. `unauthenticated`, had the server let it through).
    rt.block_on(async {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
        let ep = tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap();
        let err = match ep.connect().await {
            Ok(ch) => {
                let s =
                    TetradClient::new(ch).status(StatusRequest {}).await.expect_err("answered without a certificate");
                assert!(s.metadata().get(tetrad_proto::ERROR_KIND_KEY).is_none(), "a node answered: {s:?}");
                format!("{s:?}")
            }
            Err(e) => tetrad_ops::client::error_chain(&e),
        };
        assert!(!err.is_empty());
    });

    // A certificate with the admin role from another CA with the same cluster name, presented
    // by a client that trusts the real CA: only the node's check of the client stands in the way.
    rt.block_on(async {
        let rogue = CaBundle::generate("cluster").expect("rogue CA");
        let cert = rogue.issue_client("admin", &Role::Admin).expect("rogue cert");
        let rogue_id = Identity::from_pem("rogue/admin".into(), ca_pem.clone(), cert.cert_pem, cert.key_pem);
        let ep = endpoint(&addr, &rogue_id).expect("endpoint");
        let err = match ep.connect().await {
            Ok(ch) => {
                let s =
                    TetradClient::new(ch).status(StatusRequest {}).await.expect_err("a rogue CA's client was answered");
                assert!(s.metadata().get(tetrad_proto::ERROR_KIND_KEY).is_none(), "a node answered: {s:?}");
                format!("{s:?}")
            }
            Err(e) => tetrad_ops::client::error_chain(&e),
        };
        assert!(!err.is_empty());
    });

    // A certificate of the cluster CA without a role is authenticated by TLS but is nobody.
    rt.block_on(async {
        let plain = cluster_ca(&cluster).issue("nobody").expect("cert");
        let id = Identity::from_pem("x/nobody".into(), ca_pem.clone(), plain.cert_pem, plain.key_pem);
        let s = dial(&addr, &id).await.status(StatusRequest {}).await.expect_err("a roleless certificate");
        assert_refused("no role", &s, Code::Unauthenticated, &["nobody", "carries no tetrad role"]);
    });

    // The admin identity, through the same path, is answered.
    rt.block_on(async {
        let reply = dial(&addr, &admin).await.status(StatusRequest {}).await.expect("admin status");
        assert_eq!(reply.into_inner().nodes.len(), 4);
    });

    // A client certificate on the node-to-node port: the admin's (named "admin", no peer), and
    // one named like a node but without the node role. The victim closes both connections.
    let names = cluster.node_names();
    let (victim_name, other_node) = (names[0].clone(), names[1].clone());
    let victim = NodeConfig::load(&cluster.node_config(&victim_name)).expect("config").me().clone();
    let ca = cluster_ca(&cluster);
    let impostors = [
        (
            "the admin certificate",
            std::fs::read_to_string(admin.path.with_extension("crt")).expect("crt"),
            std::fs::read_to_string(admin.path.with_extension("key")).expect("key"),
            "none of which is a peer",
        ),
        {
            // Named like another node of the cluster, which the victim's peer table lists.
            let c = ca.issue_client(&other_node, &Role::Admin).expect("cert");
            ("a client certificate with a node's name", c.cert_pem, c.key_pem, "carries role admin")
        },
    ];
    rt.block_on(async {
        for (what, cert_pem, key_pem, expect) in impostors {
            let config = QuicConfig {
                node_id: 9_999,
                listen: "127.0.0.1:0".parse().expect("addr"),
                peers: BTreeMap::from([(victim.id, PeerAddr { name: victim.name.clone(), addr: victim.raft_addr })]),
                ca_pem: ca_pem.clone(),
                cert_pem,
                key_pem,
            };
            let transport = QuicTransport::bind(config, Arc::new(Silent)).expect("bind");
            // Any bytes: the request must never reach the node's handler.
            let outcome = transport.call(victim.id, bytes::Bytes::from_static(b"\x00"), Duration::from_secs(5)).await;
            match outcome {
                Err(NetError::Unreachable(_, reason)) => {
                    assert!(reason.contains("rejected this node's certificate"), "{what}: {reason}");
                    assert!(reason.contains(expect), "{what}: {reason}");
                }
                other => panic!("{what}: expected the node port to refuse it, got {other:?}"),
            }
            transport.shutdown().await;
        }
    });
}

/// A handler for the impostor's own (unused) inbound side.
struct Silent;

impl RpcHandler for Silent {
    fn handle(&self, _from: u64, _request: bytes::Bytes) -> futures::future::BoxFuture<'static, bytes::Bytes> {
        Box::pin(async { bytes::Bytes::new() })
    }
}

fn push_file(cluster: &LocalCluster, id: &Path, tenant: &str, n: u64) -> tetrad_tests::Ran {
    let name = segment_name(n);
    let dir = cluster.scratch().join(format!("{tenant}-{n}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = write_segment(&dir, &name, &segment_bytes(&name, 4096));
    cluster.ctl(&[
        "--identity".as_ref(),
        id.as_os_str(),
        "wal".as_ref(),
        "push".as_ref(),
        "--tenant".as_ref(),
        tenant.as_ref(),
        file.as_os_str(),
    ])
}

#[test]
fn tenant_roles_reach_only_their_tenant_and_their_rights_and_admin_reaches_everything() {
    let cluster = small_cluster();
    cluster.create_sync_tenant(ALPHA, "eu-west");
    cluster.create_sync_tenant(BETA, "eu-west");
    cluster.wait_for_tenant_leader(ALPHA, Duration::from_secs(60));
    cluster.wait_for_tenant_leader(BETA, Duration::from_secs(60));
    let addrs = api_addrs(&cluster);
    let addr = addrs[0].clone();
    let admin = cluster.identity();
    let (writer_path, writer) = issue(&cluster, "alpha-app", "tenant:alpha");
    let (reader_path, reader) = issue(&cluster, "alpha-ro", "tenant:alpha:read");
    let rt = runtime();

    // A name that is a node's is refused by `certs issue`.
    let out = cluster.scratch().join("ids");
    let node = cluster.node_names().into_iter().next().expect("a node");
    let ran = cluster.ctl(&["certs", "issue", &node, "--role", "admin", "--out", out.to_str().expect("utf-8")]);
    ran.expect_code(2);
    assert!(ran.stderr.contains("is a node's name"), "{ran}");

    // The writer pushes to alpha (tetradctl, its own identity) and is refused beta.
    push_file(&cluster, &writer_path, ALPHA, 1).expect_success();
    let ran = push_file(&cluster, &writer_path, BETA, 1);
    ran.expect_code(2);
    assert!(ran.stderr.contains("permission denied") && ran.stderr.contains("tenant:alpha"), "{ran}");
    rt.block_on(async {
        let pusher = Pusher::new(addrs.clone(), writer.clone());
        match pusher.push(BETA, &segment_name(2), b"not yours", BOUND).await {
            Err(PushError::Refused { kind, message }) => {
                assert_eq!(kind, "permission-denied");
                assert!(
                    message.contains("alpha-app") && message.contains("PushWal") && message.contains("beta"),
                    "{message}"
                );
            }
            other => panic!("a tenant:alpha push to beta: {other:?}"),
        }
        let mut c = dial(&addr, &writer).await;
        let s =
            c.fetch_wal(FetchWalRequest { tenant: BETA.into(), name: segment_name(1) }).await.expect_err("fetch beta");
        assert_refused(
            "tenant:alpha fetch of beta",
            &s,
            Code::PermissionDenied,
            &["alpha-app", "tenant:alpha", "FetchWal", "beta"],
        );
        let s = c.list_wal(ListWalRequest { tenant: BETA.into(), ..Default::default() }).await.expect_err("list beta");
        assert_refused("tenant:alpha list of beta", &s, Code::PermissionDenied, &["ListWal", "beta"]);
        let s = c.get_tenant(GetTenantRequest { name: BETA.into() }).await.expect_err("show beta");
        assert_refused("tenant:alpha show of beta", &s, Code::PermissionDenied, &["GetTenant", "beta"]);
        // Operator actions on its own tenant need admin.
        let s = c
            .failover_tenant(FailoverTenantRequest {
                name: ALPHA.into(),
                to_region: "us-east".into(),
                accept_data_loss: true,
            })
            .await
            .expect_err("tenant failover");
        assert_refused(
            "tenant:alpha failover",
            &s,
            Code::PermissionDenied,
            &["alpha-app", "tenant:alpha", "FailoverTenant", "alpha"],
        );
        let s = c
            .switchover_tenant(SwitchoverTenantRequest { name: ALPHA.into(), to_region: "us-east".into() })
            .await
            .expect_err("tenant switchover");
        assert_refused("tenant:alpha switchover", &s, Code::PermissionDenied, &["SwitchoverTenant"]);
        let s = c
            .create_tenant(CreateTenantRequest { name: "gamma".into(), mode: "sync".into(), ..Default::default() })
            .await
            .expect_err("tenant create");
        assert_refused("tenant:alpha create", &s, Code::PermissionDenied, &["CreateTenant"]);
        // Cluster-wide views show it alpha only.
        let status = c.status(StatusRequest {}).await.expect("status").into_inner();
        assert_eq!(status.tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), [ALPHA]);
        let list = c.list_tenants(ListTenantsRequest {}).await.expect("list").into_inner();
        assert_eq!(list.tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), [ALPHA]);
    });

    // The reader fetches alpha but may not push to it.
    let dest = cluster.scratch().join("fetched");
    let ran = cluster.ctl(&[
        "--identity".as_ref(),
        reader_path.as_os_str(),
        "wal".as_ref(),
        "fetch".as_ref(),
        "--tenant".as_ref(),
        ALPHA.as_ref(),
        segment_name(1).as_ref(),
        dest.as_os_str(),
    ]);
    ran.expect_success();
    assert_eq!(std::fs::read(&dest).expect("fetched"), segment_bytes(&segment_name(1), 4096));
    let ran = push_file(&cluster, &reader_path, ALPHA, 3);
    ran.expect_code(2);
    assert!(ran.stderr.contains("tenant:alpha:read") && ran.stderr.contains("PushWal"), "{ran}");
    rt.block_on(async {
        let pusher = Pusher::new(addrs.clone(), reader.clone());
        match pusher.push(ALPHA, &segment_name(4), b"read only", BOUND).await {
            Err(PushError::Refused { kind, message }) => {
                assert_eq!(kind, "permission-denied");
                assert!(message.contains("alpha-ro") && message.contains("tenant:alpha:read"), "{message}");
            }
            other => panic!("a tenant:alpha:read push: {other:?}"),
        }
        let mut c = dial(&addr, &reader).await;
        let s = c
            .verify_tenant(VerifyTenantRequest { tenant: ALPHA.into() })
            .await
            .map(|_| ())
            .expect_err("verify repairs, so it is not a read");
        assert_refused("tenant:alpha:read verify", &s, Code::PermissionDenied, &["VerifyTenant"]);
    });

    // Admin does all of it: pushes to both tenants, reads beta, and fails beta over.
    let admin_path = cluster.identity_path();
    push_file(&cluster, &admin_path, ALPHA, 5).expect_success();
    push_file(&cluster, &admin_path, BETA, 5).expect_success();
    let listed = cluster.list(BETA);
    assert_eq!(listed.len(), 1, "{listed:?}");
    rt.block_on(async {
        let status = dial(&addr, &admin).await.status(StatusRequest {}).await.expect("status").into_inner();
        let mut names: Vec<&str> = status.tenants.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, [ALPHA, BETA]);
    });
    let ran = cluster.ctl(&[
        "--timeout",
        "120s",
        "tenant",
        "failover",
        BETA,
        "--to",
        "us-east",
        "--accept-data-loss",
        "--json",
    ]);
    ran.expect_success();
    assert_eq!(cluster.tenant_show(BETA).primary, "us-east");

    // A tenant identity may not read the audit log, and a flood of one refused call is
    // coalesced: the log gains entries with counts, not one entry per refusal.
    let ran = cluster.ctl(&["--identity".as_ref(), writer_path.as_os_str(), "audit".as_ref()]);
    ran.expect_code(2);
    assert!(ran.stderr.contains("ListAudit") && ran.stderr.contains("alpha-app"), "{ran}");
    const FLOOD: u64 = 200;
    rt.block_on(async {
        let mut c = dial(&addr, &writer).await;
        for _ in 0..FLOOD {
            let s = c.get_tenant(GetTenantRequest { name: BETA.into() }).await.expect_err("show beta");
            assert_eq!(s.code(), Code::PermissionDenied);
        }
    });

    // Every refusal above left a line with its subject, and the failover one with its outcome.
    let expected: &[(&str, &str, &str, &str)] = &[
        ("alpha-app", "PushWal", BETA, "refused"),
        ("alpha-app", "FetchWal", BETA, "refused"),
        ("alpha-app", "ListWal", BETA, "refused"),
        ("alpha-app", "GetTenant", BETA, "refused"),
        ("alpha-app", "FailoverTenant", ALPHA, "refused"),
        ("alpha-app", "SwitchoverTenant", ALPHA, "refused"),
        ("alpha-app", "CreateTenant", "gamma", "refused"),
        ("alpha-ro", "PushWal", ALPHA, "refused"),
        ("alpha-ro", "VerifyTenant", ALPHA, "refused"),
        ("alpha-app", "ListAudit", "", "refused"),
    ];
    let (log, _) = tetrad_tests::wait_for("every refusal in the audit log", Duration::from_secs(60), || {
        let ran = cluster.ctl(&["audit", "--json"]);
        let log: tetrad_proto::json::Audit =
            serde_json::from_str(ran.expect_success()).unwrap_or_else(|e| panic!("audit --json ({e}): {ran}"));
        let has = |(subject, action, tenant, outcome): &(&str, &str, &str, &str)| {
            log.entries.iter().any(|e| {
                e.subject == *subject
                    && e.action == *action
                    && e.tenant.as_deref().unwrap_or("") == *tenant
                    && e.outcome == *outcome
            })
        };
        let flood: u64 =
            log.entries.iter().filter(|e| e.subject == "alpha-app" && e.action == "GetTenant").map(|e| e.count).sum();
        let missing: Vec<_> = expected.iter().filter(|x| !has(x)).collect();
        if missing.is_empty() && flood == FLOOD + 1 {
            Ok(log)
        } else {
            Err(format!("missing {missing:?}; {flood} GetTenant refusals counted"))
        }
    });
    for e in &log.entries {
        assert!(!e.subject.is_empty() && !e.node.is_empty() && e.count >= 1, "{e:?}");
        if e.outcome == "refused" {
            assert!(e.detail.contains("permission denied"), "{e:?}");
            assert!(!e.role.is_empty() && !e.peer.is_empty(), "{e:?}");
        }
    }
    let flood_entries = log.entries.iter().filter(|e| e.subject == "alpha-app" && e.action == "GetTenant").count();
    assert!((flood_entries as u64) < FLOOD, "{flood_entries} entries for {FLOOD} refusals: not coalesced");
    // The admin actions: both tenants created, and beta's failover, with their outcome.
    let admin_done = |action: &str, tenant: &str| {
        log.entries.iter().find(|e| e.action == action && e.tenant.as_deref() == Some(tenant) && e.outcome == "done")
    };
    let failover = admin_done("FailoverTenant", BETA).unwrap_or_else(|| panic!("no failover line: {log:?}"));
    assert_eq!(failover.role, "admin");
    assert!(failover.detail.contains("us-east") && failover.detail.contains("manual-failover"), "{failover:?}");
    assert!(admin_done("CreateTenant", ALPHA).is_some() && admin_done("CreateTenant", BETA).is_some(), "{log:?}");
    // Filters: by tenant, and by time (nothing in the future).
    let ran = cluster.ctl(&["audit", "--json", "--tenant", ALPHA]);
    let only: tetrad_proto::json::Audit = serde_json::from_str(ran.expect_success()).expect("json");
    assert!(!only.entries.is_empty() && only.entries.iter().all(|e| e.tenant.as_deref() == Some(ALPHA)), "{only:?}");
    let ran = cluster.ctl(&["audit", "--json", "--since", "2100-01-01T00:00:00Z"]);
    let none: tetrad_proto::json::Audit = serde_json::from_str(ran.expect_success()).expect("json");
    assert!(none.entries.is_empty(), "{none:?}");
    let table = cluster.ctl(&["audit"]);
    assert!(table.expect_success().contains("FailoverTenant"), "{table}");
}
