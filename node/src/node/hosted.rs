//! The tenant groups running on this node, by group name (`t/<tenant>/<epoch>`). Only the
//! reconcile service starts and stops groups ([`HostedGroups::insert`], [`HostedGroups::remove`]);
//! every other service reads the registry through a shared handle.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::raft::group::Group;
use crate::tenant::group_state::TenantState;

/// A tenant group as this node runs it.
pub(crate) type TenantGroup = Arc<Group<TenantState>>;

/// The registry of running tenant groups. The lock is held only to copy an `Arc` in or out,
/// never across an await.
#[derive(Default)]
pub(crate) struct HostedGroups {
    groups: Mutex<BTreeMap<String, TenantGroup>>,
}

impl HostedGroups {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TenantGroup>> {
        self.groups.lock().expect("tenants lock")
    }

    /// The running group called `group`, if it runs here.
    pub(crate) fn get(&self, group: &str) -> Option<TenantGroup> {
        self.lock().get(group).cloned()
    }

    /// Every running group, in name order.
    pub(crate) fn all(&self) -> Vec<TenantGroup> {
        self.lock().values().cloned().collect()
    }

    /// The names of every running group, in order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Every running group with its name, in name order.
    pub(crate) fn named(&self) -> Vec<(String, TenantGroup)> {
        self.lock().iter().map(|(n, g)| (n.clone(), g.clone())).collect()
    }

    pub(super) fn insert(&self, group: String, g: TenantGroup) {
        self.lock().insert(group, g);
    }

    pub(super) fn remove(&self, group: &str) -> Option<TenantGroup> {
        self.lock().remove(group)
    }
}
