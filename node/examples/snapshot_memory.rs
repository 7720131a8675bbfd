//! Peak memory of building and installing a tenant snapshot, by reference (this build) and with
//! every chunk's bytes (the build before, issue #12), for a tenant of N GiB of distinct data on a
//! real disk. A measurement, not a test: it prints figures. Each step runs in its own process,
//! since the peak (`VmHWM`) is per process:
//!
//! ```sh
//! ex="cargo run --release -p tetrad-node --example snapshot_memory --"
//! $ex setup /var/tmp/snapmem 1          # a founder replica with 1 GiB in 16 MiB segments
//! $ex build-by-ref /var/tmp/snapmem     # GroupSm::build_snapshot, as the leader runs it
//! $ex install-by-ref /var/tmp/snapmem   # a new member: fetch every chunk, then install
//! $ex build-with-bytes /var/tmp/snapmem # the previous build's snapshot_bytes and file write
//! $ex install-with-bytes /var/tmp/snapmem # a new member installs that snapshot (legacy path)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use tetrad_node::raft::peers::PeerBook;
use tetrad_node::raft::state_machine::{prepare_install, ApplyInfo, GroupSm, GroupState};
use tetrad_node::raft::types::{Command, SnapshotMeta};
use tetrad_node::seams::disk::{DiskRef, OsDisk};
use tetrad_node::storage::chunks::{ChunkSource, ChunkStore, Fetched, Hash};
use tetrad_node::storage::store::Store;
use tetrad_node::tenant::catalog::{SegmentRecord, TenantCommand};
use tetrad_node::tenant::group_state::TenantState;

const GROUP: &str = "t/big/1";
const SEGMENT_BYTES: usize = 16 << 20;

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn store(root: &Path, fresh: bool) -> Arc<Store> {
    let disk: DiskRef = Arc::new(OsDisk::new());
    if fresh {
        let _ = std::fs::remove_dir_all(root);
        Store::init(disk.clone(), root, "n1", 7).expect("init");
    }
    Store::open(disk, root, "n1").expect("open")
}

/// The founder's chunk files, as the group's other members would serve them.
struct Founder(ChunkStore);

impl ChunkSource for Founder {
    fn fetch(&self, hash: Hash) -> BoxFuture<'static, Result<Fetched, String>> {
        let got = self.0.get(&hash).map(|data| Fetched { from: 1, data }).map_err(|e| e.to_string());
        Box::pin(async move { got })
    }
}

/// The previous build's tenant snapshot and snapshot file, field for field.
#[derive(Serialize, Deserialize)]
struct LegacySnapshot {
    segments: Vec<SegmentRecord>,
    #[serde(with = "tetrad_node::storage::byte_buf::pairs")]
    chunks: Vec<(Hash, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    #[serde(with = "tetrad_node::storage::byte_buf")]
    data: Vec<u8>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (step, dir) = (args.get(1).expect("a step").as_str(), PathBuf::from(args.get(2).expect("a directory")));
    let founder = dir.join("founder");
    let started = std::time::Instant::now();
    let base = peak_mib();
    match step {
        "setup" => {
            let gib: usize = args.get(3).and_then(|g| g.parse().ok()).unwrap_or(1);
            let store = store(&founder, true);
            let mut st = TenantState::load(&store, GROUP).unwrap();
            let mut data = vec![0u8; SEGMENT_BYTES];
            for i in 0..gib * 1024 / 16 {
                let mut xof = blake3::Hasher::new().update(&(i as u64).to_le_bytes()).finalize_xof();
                xof.fill(&mut data);
                let cmd = Command::Tenant(TenantCommand::PutSegment {
                    name: format!("{:024X}", i + 1),
                    blake3: *blake3::hash(&data).as_bytes(),
                    data: data.clone(),
                    proposed_at_ms: 1,
                });
                let mut work = vec![];
                st.apply(&store, GROUP, ApplyInfo { term: 1, index: i as u64 + 1 }, &cmd, &mut work).unwrap();
                store.write(work).await.unwrap();
            }
            println!("setup: {} segments, {} bytes", st.catalog.segments.len(), st.catalog.bytes);
        }
        "build-by-ref" => {
            let sm = GroupSm::<TenantState>::open(store(&founder, false), GROUP, PeerBook::default()).unwrap();
            let base = peak_mib();
            let snap = sm.clone().get_snapshot_builder().await.build_snapshot().await.unwrap();
            println!(
                "build-by-ref: snapshot {} bytes, peak {:.0} MiB (after open {base:.0} MiB)",
                snap.snapshot.len(),
                peak_mib()
            );
        }
        "install-by-ref" => {
            let fstore = store(&founder, false);
            let data = TenantState::load(&fstore, GROUP).unwrap().snapshot_bytes(&fstore).unwrap();
            let mut sm =
                GroupSm::<TenantState>::open(store(&dir.join("learner-by-ref"), true), GROUP, PeerBook::default())
                    .unwrap();
            sm.reader()
                .write()
                .await
                .state
                .set_chunk_source(Arc::new(Founder(ChunkStore::new(fstore.disk().clone(), &founder))));
            let base = peak_mib();
            let fetched = prepare_install(&sm.reader(), &data).await.unwrap();
            sm.install_snapshot(&SnapshotMeta::default(), data).await.unwrap();
            println!("install-by-ref: {fetched:?}, peak {:.0} MiB (before the install {base:.0} MiB)", peak_mib());
        }
        "build-with-bytes" => {
            let fstore = store(&founder, false);
            let st = TenantState::load(&fstore, GROUP).unwrap();
            let base = peak_mib();
            // The previous `snapshot_bytes`, under the state lock: every chunk read.
            let mut chunks = std::collections::BTreeMap::new();
            for rec in st.catalog.segments.values() {
                for h in &rec.chunks {
                    if !chunks.contains_key(h) {
                        chunks.insert(*h, st.chunks.get(h).unwrap());
                    }
                }
            }
            let snap = LegacySnapshot {
                segments: st.catalog.segments.values().cloned().collect(),
                chunks: chunks.into_iter().collect(),
            };
            let data = postcard::to_stdvec(&snap).unwrap();
            drop(snap);
            // The previous `build_snapshot`: the file written durably, the data handed to openraft.
            let file = SnapshotFile { meta: SnapshotMeta::default(), data };
            let bytes = tetrad_node::storage::versioned::encode_snapshot_file(&file);
            fstore.disk().write_file_durable(&dir.join("with-bytes.snap"), &bytes).unwrap();
            println!(
                "build-with-bytes: snapshot {} bytes, peak {:.0} MiB (after open {base:.0} MiB)",
                bytes.len(),
                peak_mib()
            );
        }
        "install-with-bytes" => {
            let mut sm =
                GroupSm::<TenantState>::open(store(&dir.join("learner-with-bytes"), true), GROUP, PeerBook::default())
                    .unwrap();
            let base = peak_mib();
            // What arrives from the network: the snapshot's data, whole.
            let bytes = std::fs::read(dir.join("with-bytes.snap")).unwrap();
            let file: SnapshotFile = tetrad_node::storage::versioned::decode_snapshot_file("snapshot", &bytes).unwrap();
            drop(bytes);
            sm.install_snapshot(&file.meta, file.data).await.unwrap();
            println!("install-with-bytes: peak {:.0} MiB (before the install {base:.0} MiB)", peak_mib());
        }
        other => panic!("unknown step {other}"),
    }
    println!(
        "{step}: {:.1} s, process peak {:.0} MiB (at start {base:.0} MiB)",
        started.elapsed().as_secs_f64(),
        peak_mib()
    );
}
