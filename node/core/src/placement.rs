//! Where a tenant's replicas go: a pure function of the spec, the topology and the current load,
//! and the refusal (with its reason) of a placement that cannot keep the mode's claim.
//!
//! sync: 2 voters in the primary region and 1 in every other allowed region, so that a commit
//! needs two regions and no region holds a quorum. near-sync and async: 3 voters in the primary
//! region and a learner in every other allowed region.

use std::collections::{BTreeMap, BTreeSet};

use crate::directory::{Mode, TenantSpec};
use crate::NodeId;

/// Voters of a near-sync or async tenant in its primary region.
pub const ASYNC_PRIMARY_VOTERS: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSlot {
    pub id: NodeId,
    pub region: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// Why a placement is refused. The messages reach operators as they are (`tenant create`,
/// `tenant mode`): they say what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("region {region:?} does not exist (regions: {})", .regions.join(", "))]
    UnknownRegion { region: String, regions: Vec<String> },
    #[error("primary region {primary:?} is not among the tenant's allowed regions ({})", .allowed.join(", "))]
    PrimaryNotAllowed { primary: String, allowed: Vec<String> },
    #[error(
        "sync needs replicas in at least 3 regions so that losing one keeps a quorum; the tenant allows {} ({})",
        .allowed.len(),
        .allowed.join(", ")
    )]
    SyncTooFewRegions { allowed: Vec<String> },
    #[error("primary region {primary} has no nodes")]
    PrimaryEmpty { primary: String },
    #[error("region {region} has no nodes for a sync replica")]
    RegionEmpty { region: String },
    #[error("region {region} would hold {holds} of {voters} voters, a quorum; sync forbids that")]
    RegionalQuorum { region: String, holds: usize, voters: usize },
    #[error(
        "{} needs {ASYNC_PRIMARY_VOTERS} nodes in the primary region {primary} (a quorum there survives one node); it has {have}",
        .mode.as_str()
    )]
    TooFewPrimaryNodes { mode: Mode, primary: String, have: usize },
    #[error(
        "{} needs a replica outside the primary region {primary} to survive its loss; the tenant allows no other region with nodes",
        .mode.as_str()
    )]
    NothingOutsidePrimary { mode: Mode, primary: String },
}

/// Regions in topology order (first appearance).
pub fn regions_of(topology: &[NodeSlot]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    topology.iter().filter(|n| seen.insert(n.region.clone())).map(|n| n.region.clone()).collect()
}

/// Picks the primary region when the operator gave none: the allowed region with the fewest
/// primaries, earliest in topology order on ties.
pub fn default_primary(
    topology: &[NodeSlot],
    allowed: &[String],
    primaries: &BTreeMap<String, usize>,
) -> Option<String> {
    regions_of(topology)
        .into_iter()
        .filter(|r| allowed.is_empty() || allowed.contains(r))
        .min_by_key(|r| primaries.get(r).copied().unwrap_or(0))
}

/// The `count` least loaded nodes of `region` (by id on ties).
fn pick(topology: &[NodeSlot], region: &str, count: usize, load: &BTreeMap<NodeId, usize>) -> Vec<NodeId> {
    let mut cands: Vec<&NodeSlot> = topology.iter().filter(|n| n.region == region).collect();
    cands.sort_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id));
    cands.into_iter().take(count).map(|n| n.id).collect()
}

/// Places a tenant of `spec` on `topology` (the nodes it may use), preferring the least loaded.
pub fn place(
    spec: &TenantSpec,
    topology: &[NodeSlot],
    load: &BTreeMap<NodeId, usize>,
) -> Result<Placement, PlacementError> {
    let all = regions_of(topology);
    for r in &spec.regions {
        if !all.contains(r) {
            return Err(PlacementError::UnknownRegion { region: r.clone(), regions: all });
        }
    }
    let allowed: Vec<String> =
        all.iter().filter(|r| spec.regions.is_empty() || spec.regions.contains(r)).cloned().collect();
    if !allowed.contains(&spec.primary) {
        return Err(PlacementError::PrimaryNotAllowed { primary: spec.primary.clone(), allowed });
    }
    let others: Vec<&String> = allowed.iter().filter(|r| **r != spec.primary).collect();
    match spec.mode {
        Mode::Sync => {
            if allowed.len() < 3 {
                return Err(PlacementError::SyncTooFewRegions { allowed });
            }
            let mut voters = pick(topology, &spec.primary, 2, load);
            if voters.is_empty() {
                return Err(PlacementError::PrimaryEmpty { primary: spec.primary.clone() });
            }
            for r in &others {
                let got = pick(topology, r, 1, load);
                if got.is_empty() {
                    return Err(PlacementError::RegionEmpty { region: r.to_string() });
                }
                voters.extend(got);
            }
            // No region may hold a quorum, or losing that region would lose acked writes' only
            // quorum and a commit would not span two regions.
            let quorum = voters.len() / 2 + 1;
            let mut per_region: BTreeMap<&str, usize> = BTreeMap::new();
            for v in &voters {
                let region = &topology.iter().find(|n| n.id == *v).expect("picked from topology").region;
                *per_region.entry(region).or_insert(0) += 1;
            }
            if let Some((r, n)) = per_region.iter().find(|(_, n)| **n >= quorum) {
                return Err(PlacementError::RegionalQuorum { region: r.to_string(), holds: *n, voters: voters.len() });
            }
            Ok(Placement { voters, learners: vec![] })
        }
        Mode::NearSync | Mode::Async => {
            // The voting quorum lives in the primary region (a commit there is the ack), and a
            // learner in every other allowed region holds the copy that survives the region.
            let voters = pick(topology, &spec.primary, ASYNC_PRIMARY_VOTERS, load);
            if voters.len() < ASYNC_PRIMARY_VOTERS {
                return Err(PlacementError::TooFewPrimaryNodes {
                    mode: spec.mode,
                    primary: spec.primary.clone(),
                    have: voters.len(),
                });
            }
            let mut learners = vec![];
            for r in &others {
                learners.extend(pick(topology, r, 1, load));
            }
            if learners.is_empty() {
                return Err(PlacementError::NothingOutsidePrimary { mode: spec.mode, primary: spec.primary.clone() });
            }
            Ok(Placement { voters, learners })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::directory::OnLag;

    const REGIONS: [&str; 4] = ["eu-central", "eu-west", "us-east", "ap-south"];

    fn topo(per_region: u64) -> Vec<NodeSlot> {
        let mut v = vec![];
        for (ri, r) in REGIONS.iter().enumerate() {
            for k in 1..=per_region {
                v.push(NodeSlot { id: (ri as u64 + 1) * 100 + k, region: r.to_string() });
            }
        }
        v
    }

    fn spec(primary: &str, regions: &[&str]) -> TenantSpec {
        TenantSpec {
            name: "t".into(),
            mode: Mode::Sync,
            primary: primary.into(),
            rpo_target_ms: 0,
            on_lag: OnLag::Block,
            regions: regions.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn sync_default_placement_is_two_in_primary_and_one_elsewhere() {
        let p = place(&spec("eu-west", &[]), &topo(3), &BTreeMap::new()).unwrap();
        assert_eq!(p.voters, vec![201, 202, 101, 301, 401]);
        assert!(p.learners.is_empty());
    }

    #[test]
    fn placement_prefers_the_least_loaded_nodes() {
        let load = BTreeMap::from([(201, 3), (202, 1), (101, 2)]);
        let p = place(&spec("eu-west", &[]), &topo(3), &load).unwrap();
        assert_eq!(p.voters, vec![203, 202, 102, 301, 401]);
    }

    #[test]
    fn sync_in_two_regions_is_refused_with_the_reason() {
        let err = place(&spec("eu-west", &["eu-west", "us-east"]), &topo(3), &BTreeMap::new()).unwrap_err();
        assert_eq!(err, PlacementError::SyncTooFewRegions { allowed: vec!["eu-west".into(), "us-east".into()] });
        assert_eq!(
            err.to_string(),
            "sync needs replicas in at least 3 regions so that losing one keeps a quorum; the tenant allows 2 (eu-west, us-east)"
        );
    }

    #[test]
    fn residency_keeps_replicas_inside_the_allowed_regions() {
        let p = place(&spec("eu-west", &["eu-west", "eu-central", "us-east"]), &topo(3), &BTreeMap::new()).unwrap();
        assert_eq!(p.voters, vec![201, 202, 101, 301]);
    }

    #[test]
    fn one_node_per_region_still_spans_regions_without_a_regional_quorum() {
        let p = place(&spec("eu-west", &[]), &topo(1), &BTreeMap::new()).unwrap();
        assert_eq!(p.voters, vec![201, 101, 301, 401]);
    }

    #[test]
    fn near_sync_and_async_keep_three_voters_in_the_primary_and_a_learner_elsewhere() {
        for mode in [Mode::NearSync, Mode::Async] {
            let mut s = spec("us-east", &[]);
            s.mode = mode;
            let p = place(&s, &topo(3), &BTreeMap::new()).unwrap();
            assert_eq!(p.voters, vec![301, 302, 303]);
            assert_eq!(p.learners, vec![101, 201, 401]);
            s.regions = vec!["us-east".into(), "eu-west".into()];
            let p = place(&s, &topo(3), &BTreeMap::new()).unwrap();
            assert_eq!(p.learners, vec![201], "residency: nothing outside the allowed regions");
        }
    }

    #[test]
    fn near_sync_refuses_a_placement_that_cannot_keep_its_claim() {
        let mut s = spec("us-east", &["us-east"]);
        s.mode = Mode::NearSync;
        let err = place(&s, &topo(3), &BTreeMap::new()).unwrap_err();
        assert_eq!(err, PlacementError::NothingOutsidePrimary { mode: Mode::NearSync, primary: "us-east".into() });
        assert_eq!(
            err.to_string(),
            "near-sync needs a replica outside the primary region us-east to survive its loss; the tenant allows no other region with nodes"
        );
        s.regions = vec![];
        let err = place(&s, &topo(2), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "near-sync needs 3 nodes in the primary region us-east (a quorum there survives one node); it has 2"
        );
    }

    #[test]
    fn unknown_primary_or_region_is_refused() {
        let err = place(&spec("mars", &[]), &topo(3), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "primary region \"mars\" is not among the tenant's allowed regions (eu-central, eu-west, us-east, ap-south)"
        );
        let err = place(&spec("eu-west", &["eu-west", "mars"]), &topo(3), &BTreeMap::new()).unwrap_err();
        assert_eq!(err.to_string(), "region \"mars\" does not exist (regions: eu-central, eu-west, us-east, ap-south)");
    }

    #[test]
    fn a_region_without_nodes_is_not_a_region_of_the_topology() {
        let t: Vec<NodeSlot> = topo(2).into_iter().filter(|n| n.region != "us-east").collect();
        let err = place(&spec("eu-west", &["eu-west", "eu-central", "us-east"]), &t, &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, PlacementError::UnknownRegion { ref region, .. } if region == "us-east"), "{err}");
    }

    #[test]
    fn default_primary_is_the_region_with_the_fewest_primaries() {
        let primaries = BTreeMap::from([("eu-central".to_string(), 2), ("eu-west".to_string(), 1)]);
        assert_eq!(default_primary(&topo(1), &[], &primaries).as_deref(), Some("us-east"));
        let allowed = vec!["eu-central".to_string(), "eu-west".to_string()];
        assert_eq!(default_primary(&topo(1), &allowed, &primaries).as_deref(), Some("eu-west"));
    }

    /// A topology of up to 4 regions with 0-4 nodes each, a spec over it and a load.
    fn case() -> impl Strategy<Value = (Vec<NodeSlot>, TenantSpec, BTreeMap<NodeId, usize>)> {
        (
            proptest::collection::vec(0u64..5, 4),
            proptest::sample::select(Mode::ALL.to_vec()),
            0usize..5,
            proptest::collection::vec(any::<bool>(), 5),
            proptest::collection::vec(0usize..4, 20),
        )
            .prop_map(|(sizes, mode, primary, allow, loads)| {
                let mut t = vec![];
                for (ri, n) in sizes.iter().enumerate() {
                    for k in 1..=*n {
                        t.push(NodeSlot { id: (ri as u64 + 1) * 100 + k, region: REGIONS[ri].to_string() });
                    }
                }
                // Index 4 names a region that does not exist.
                let name = |i: usize| REGIONS.get(i).copied().unwrap_or("mars").to_string();
                let regions: Vec<String> = (0..5).filter(|i| allow[*i]).map(name).collect();
                let load = t.iter().zip(loads).map(|(n, l)| (n.id, l)).collect();
                let spec = TenantSpec {
                    name: "t".into(),
                    mode,
                    primary: name(primary),
                    rpo_target_ms: 1000,
                    on_lag: OnLag::Block,
                    regions,
                };
                (t, spec, load)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every placement keeps its mode's claim and the tenant's residency; every refusal says
        /// which rule it could not meet, and is refused only when that rule really fails.
        #[test]
        fn placements_keep_the_claim_and_refusals_have_reasons((t, spec, load) in case()) {
            let region_of = |id: NodeId| t.iter().find(|n| n.id == id).map(|n| n.region.clone()).expect("placed from topology");
            let all = regions_of(&t);
            let allowed: Vec<String> = all.iter().filter(|r| spec.regions.is_empty() || spec.regions.contains(r)).cloned().collect();
            let in_region = |r: &str| t.iter().filter(|n| n.region == r).count();
            match place(&spec, &t, &load) {
                Ok(p) => {
                    let members: Vec<NodeId> = p.voters.iter().chain(&p.learners).copied().collect();
                    let distinct: BTreeSet<NodeId> = members.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), members.len(), "a node placed twice");
                    for m in &members {
                        prop_assert!(allowed.contains(&region_of(*m)), "residency broken by node {}", m);
                    }
                    let mut per_region: BTreeMap<String, usize> = BTreeMap::new();
                    for v in &p.voters {
                        *per_region.entry(region_of(*v)).or_default() += 1;
                    }
                    match spec.mode {
                        Mode::Sync => {
                            prop_assert!(p.learners.is_empty());
                            let quorum = p.voters.len() / 2 + 1;
                            prop_assert!(per_region.values().all(|n| *n < quorum), "a region holds a sync quorum: {:?}", per_region);
                            prop_assert!(per_region.len() >= 3, "sync spans fewer than 3 regions");
                            prop_assert_eq!(per_region.len(), allowed.len(), "every allowed region has a voter");
                        }
                        Mode::NearSync | Mode::Async => {
                            prop_assert_eq!(p.voters.len(), ASYNC_PRIMARY_VOTERS);
                            prop_assert!(p.voters.iter().all(|v| region_of(*v) == spec.primary));
                            prop_assert!(!p.learners.is_empty());
                            prop_assert!(p.learners.iter().all(|l| region_of(*l) != spec.primary));
                        }
                    }
                }
                Err(e) => {
                    let ok = match &e {
                        PlacementError::UnknownRegion { region, .. } => !all.contains(region) && spec.regions.contains(region),
                        PlacementError::PrimaryNotAllowed { primary, .. } => !allowed.contains(primary),
                        PlacementError::SyncTooFewRegions { allowed: a } => spec.mode == Mode::Sync && a.len() < 3,
                        PlacementError::PrimaryEmpty { primary } => in_region(primary) == 0,
                        PlacementError::RegionEmpty { region } => in_region(region) == 0,
                        // Two in the primary and one in each of >= 2 other regions never hold a
                        // quorum: this refusal cannot happen with these topologies.
                        PlacementError::RegionalQuorum { .. } => false,
                        PlacementError::TooFewPrimaryNodes { have, .. } => spec.mode != Mode::Sync && *have == in_region(&spec.primary) && *have < ASYNC_PRIMARY_VOTERS,
                        PlacementError::NothingOutsidePrimary { .. } => spec.mode != Mode::Sync && allowed.iter().all(|r| *r == spec.primary || in_region(r) == 0),
                    };
                    prop_assert!(ok, "refusal without cause: {}", e);
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}
