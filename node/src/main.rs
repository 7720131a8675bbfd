//! `tetrad`: the server. `tetrad init --config FILE` creates a node's store (a new storage
//! incarnation); `tetrad run --config FILE` runs the node until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tetrad_node::api::Api;
use tetrad_node::config::NodeConfig;
use tetrad_node::net::quic::{PeerAddr, QuicConfig, QuicTransport};
use tetrad_node::node::{Node, NodeDeps};
use tetrad_node::seams::clock::SystemClock;
use tetrad_node::seams::disk::OsDisk;
use tetrad_node::seams::net::TransportRef;
use tetrad_node::seams::rng::SeededRng;
use tetrad_node::storage::store::Store;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

#[derive(Parser)]
#[command(name = "tetrad", about = "tetrad node: keeps tenants' WAL segments safe against the loss of a region")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Creates the node's store with a new storage incarnation. Refuses if one exists.
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Runs the node.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Checks a config file and prints it back normalised.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<NodeConfig, ExitCode> {
    NodeConfig::load(path).map_err(|e| {
        eprintln!("tetrad: {e}");
        ExitCode::from(2)
    })
}

fn read(path: &std::path::Path, what: &str) -> Result<String, ExitCode> {
    std::fs::read_to_string(path).map_err(|e| {
        eprintln!("tetrad: cannot read {what} {}: {e}", path.display());
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                print!("{}", c.to_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Init { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let incarnation = SeededRng::from_os().next_u64();
            match Store::init(Arc::new(OsDisk::new()), &cfg.data_dir, &cfg.name, incarnation) {
                Ok(()) => {
                    println!(
                        "initialised node {} in {} (storage incarnation {incarnation:016x})",
                        cfg.name,
                        cfg.data_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tetrad: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Run { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tetrad: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(run(cfg))
        }
    }
}

async fn run(cfg: NodeConfig) -> ExitCode {
    let (ca, cert, key) =
        match (read(&cfg.tls.ca_cert, "CA certificate"), read(&cfg.tls.cert, "certificate"), read(&cfg.tls.key, "key"))
        {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
        };
    let me = cfg.me().clone();
    let peers: BTreeMap<_, _> = cfg
        .nodes
        .iter()
        .filter(|p| p.id != me.id)
        .map(|p| (p.id, PeerAddr { name: p.name.clone(), addr: p.raft_addr }))
        .collect();
    // The API presents the node's certificate too and requires a client certificate from the
    // cluster CA; each call is then authorized by the role in it (`tetrad_node::api`).
    let (api_ca, api_cert, api_key) = (ca.clone(), cert.clone(), key.clone());
    let qcfg = QuicConfig { node_id: me.id, listen: me.raft_addr, peers, ca_pem: ca, cert_pem: cert, key_pem: key };
    let deps = NodeDeps { clock: Arc::new(SystemClock::new()), disk: Arc::new(OsDisk::new()) };
    let node = match Node::start(cfg.clone(), deps, move |handler| {
        QuicTransport::bind(qcfg, handler).map(|t| t as TransportRef).map_err(|e| e.to_string())
    })
    .await
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tetrad: node {} cannot start: {e}", cfg.name);
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(me.api_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tetrad: cannot listen for the API on {}: {e}", me.api_addr);
            return ExitCode::from(2);
        }
    };
    tracing::info!(node = %cfg.name, api = %me.api_addr, raft = %me.raft_addr, "serving");
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let api_tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&api_cert, &api_key))
        .client_ca_root(Certificate::from_pem(&api_ca));
    let limits = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(API_CALLS_PER_CONNECTION_MAX)
        .max_concurrent_streams(API_STREAMS_PER_CONNECTION_MAX)
        .http2_max_pending_accept_reset_streams(Some(API_STREAMS_PER_CONNECTION_MAX as usize))
        .timeout(API_REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
    let mut builder = match limits.tls_config(api_tls) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tetrad: cannot set up TLS for the API: {e}");
            return ExitCode::from(2);
        }
    };
    let served = builder
        .add_service(Api::new(node.clone()).into_server())
        .serve_with_incoming_shutdown(api_incoming(listener), shutdown)
        .await;
    tracing::info!(node = %cfg.name, "shutting down");
    node.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tetrad: API server failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Calls one client connection may have running at once; more wait for a turn (tonic's
/// `concurrency_limit_per_connection`), so one client cannot occupy the node's tasks.
const API_CALLS_PER_CONNECTION_MAX: usize = 64;
/// HTTP/2 streams one connection may have open; the client is refused more (REFUSED_STREAM).
const API_STREAMS_PER_CONNECTION_MAX: u32 = 128;
/// The server's deadline for any one call until its reply starts (a push: its whole upload),
/// whatever the client asked for; a client's own `grpc-timeout` shortens it. A push that stalls
/// is refused sooner by its idle limit (`api::PUSH_IDLE_TIMEOUT`).
const API_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The API's accepted connections, with Nagle's algorithm off; tonic runs the TLS handshake on
/// them (`Server::tls_config`), so TCP_NODELAY set here still holds under TLS. tonic sets TCP_NODELAY only on
/// listeners it binds itself (`Server::tcp_nodelay` is ignored by `serve_with_incoming`). With
/// Nagle on, a reply written in more than one piece (HTTP/2 headers, data, trailers) waits for
/// the client's ACK of the first piece, and Linux delays that ACK by up to 40 ms: a small write
/// was acked 40 ms late whenever that happened (issue #13).
fn api_incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
