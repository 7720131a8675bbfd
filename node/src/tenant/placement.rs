//! Where a tenant's replicas go: a pure function of the spec, the topology and the current load.
//!
//! sync: 2 voters in the primary region and 1 in every other allowed region, so that a commit
//! needs two regions and no region holds a quorum. near-sync and async (issue #4): 3 voters in
//! the primary region and a learner in every other allowed region. A placement that cannot keep
//! the mode's claim is refused with the reason.

use std::collections::{BTreeMap, BTreeSet};

use crate::meta::state::{Mode, TenantSpec};
use crate::seams::net::NodeId;

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

fn pick(topology: &[NodeSlot], region: &str, count: usize, load: &BTreeMap<NodeId, usize>) -> Vec<NodeId> {
    let mut cands: Vec<&NodeSlot> = topology.iter().filter(|n| n.region == region).collect();
    cands.sort_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id));
    cands.into_iter().take(count).map(|n| n.id).collect()
}

pub fn place(spec: &TenantSpec, topology: &[NodeSlot], load: &BTreeMap<NodeId, usize>) -> Result<Placement, String> {
    let all = regions_of(topology);
    for r in &spec.regions {
        if !all.contains(r) {
            return Err(format!("region {r:?} does not exist (regions: {})", all.join(", ")));
        }
    }
    let allowed: Vec<String> =
        all.iter().filter(|r| spec.regions.is_empty() || spec.regions.contains(r)).cloned().collect();
    if !allowed.contains(&spec.primary) {
        return Err(format!(
            "primary region {:?} is not among the tenant's allowed regions ({})",
            spec.primary,
            allowed.join(", ")
        ));
    }
    let others: Vec<&String> = allowed.iter().filter(|r| **r != spec.primary).collect();
    match spec.mode {
        Mode::Sync => {
            if allowed.len() < 3 {
                return Err(format!(
                    "sync needs replicas in at least 3 regions so that losing one keeps a quorum; the tenant allows {} ({})",
                    allowed.len(),
                    allowed.join(", ")
                ));
            }
            let mut voters = pick(topology, &spec.primary, 2, load);
            if voters.is_empty() {
                return Err(format!("primary region {} has no nodes", spec.primary));
            }
            for r in &others {
                let got = pick(topology, r, 1, load);
                if got.is_empty() {
                    return Err(format!("region {r} has no nodes for a sync replica"));
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
                return Err(format!(
                    "region {r} would hold {n} of {} voters, a quorum; sync forbids that",
                    voters.len()
                ));
            }
            Ok(Placement { voters, learners: vec![] })
        }
        Mode::NearSync | Mode::Async => {
            // The voting quorum lives in the primary region (a commit there is the ack), and a
            // learner in every other allowed region holds the copy that survives the region.
            let voters = pick(topology, &spec.primary, ASYNC_PRIMARY_VOTERS, load);
            if voters.len() < ASYNC_PRIMARY_VOTERS {
                return Err(format!(
                    "{} needs {ASYNC_PRIMARY_VOTERS} nodes in the primary region {} (a quorum there survives one node); it has {}",
                    spec.mode.as_str(),
                    spec.primary,
                    voters.len()
                ));
            }
            let mut learners = vec![];
            for r in &others {
                learners.extend(pick(topology, r, 1, load));
            }
            if learners.is_empty() {
                return Err(format!(
                    "{} needs a replica outside the primary region {} to survive its loss; the tenant allows no other region with nodes",
                    spec.mode.as_str(),
                    spec.primary
                ));
            }
            Ok(Placement { voters, learners })
        }
    }
}

/// Voters of a near-sync or async tenant in its primary region.
pub const ASYNC_PRIMARY_VOTERS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(per_region: u64) -> Vec<NodeSlot> {
        let mut v = vec![];
        for (ri, r) in ["eu-central", "eu-west", "us-east", "ap-south"].iter().enumerate() {
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
            on_lag: "block".into(),
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
        assert!(err.contains("at least 3 regions"), "{err}");
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
        assert!(err.contains("outside the primary region"), "{err}");
        s.regions = vec![];
        let err = place(&s, &topo(2), &BTreeMap::new()).unwrap_err();
        assert!(err.contains("needs 3 nodes"), "{err}");
    }

    #[test]
    fn unknown_primary_or_region_is_refused() {
        assert!(place(&spec("mars", &[]), &topo(3), &BTreeMap::new()).is_err());
        assert!(place(&spec("eu-west", &["eu-west", "mars"]), &topo(3), &BTreeMap::new()).is_err());
    }
}
