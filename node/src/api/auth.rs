//! Who may call what on the client API. The TLS layer (tonic's rustls acceptor, set up in
//! `main.rs`) has already verified the client's certificate against the cluster CA; this module
//! reads the role out of that certificate ([`Subject::from_peer_certs`]) and decides, without
//! I/O, whether the role allows an [`Action`] ([`authorize`]).
//!
//! The rules: `admin` may do everything. `tenant:T` may read and write tenant T's data (push,
//! fetch, list, show, history, verify) and see T in `status` and `tenant list`. `tenant:T:read`
//! may only read T (fetch, list, show, history, status). Creating tenants, switchovers,
//! failovers, mode changes and cluster initialization need `admin`. A node's certificate is for
//! the node-to-node port only and may do nothing here.

use rustls::pki_types::CertificateDer;
use tetrad_config::role::{role_from_cert_der, Role};

/// One thing a client asks for, with the tenant it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// `status` and `tenant list`: allowed to every tenant role, whose view is then filtered.
    ViewCluster,
    InitCluster,
    CreateTenant(&'a str),
    GetTenant(&'a str),
    TenantHistory(&'a str),
    FetchWal(&'a str),
    ListWal(&'a str),
    PushWal(&'a str),
    GetRecord(&'a str),
    ListRecords(&'a str),
    PutRecord(&'a str),
    DeleteRecord(&'a str),
    VerifyTenant(&'a str),
    Switchover(&'a str),
    Failover(&'a str),
    SetMode(&'a str),
    /// `ListAudit`: the audit log is every tenant's, so only admin reads it.
    ReadAudit,
}

/// What an action needs of a tenant role.
enum Need {
    Read,
    Write,
    Admin,
}

impl Action<'_> {
    /// The action's name in refusals: the RPC it comes from.
    pub fn name(&self) -> &'static str {
        match self {
            Action::ViewCluster => "Status/ListTenants",
            Action::InitCluster => "InitCluster",
            Action::CreateTenant(_) => "CreateTenant",
            Action::GetTenant(_) => "GetTenant",
            Action::TenantHistory(_) => "TenantHistory",
            Action::FetchWal(_) => "FetchWal",
            Action::ListWal(_) => "ListWal",
            Action::PushWal(_) => "PushWal",
            Action::GetRecord(_) => "GetRecord",
            Action::ListRecords(_) => "ListRecords",
            Action::PutRecord(_) => "PutRecord",
            Action::DeleteRecord(_) => "DeleteRecord",
            Action::VerifyTenant(_) => "VerifyTenant",
            Action::Switchover(_) => "SwitchoverTenant",
            Action::Failover(_) => "FailoverTenant",
            Action::SetMode(_) => "SetTenantMode",
            Action::ReadAudit => "ListAudit",
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        match *self {
            Action::ViewCluster | Action::InitCluster | Action::ReadAudit => None,
            Action::CreateTenant(t)
            | Action::GetTenant(t)
            | Action::TenantHistory(t)
            | Action::FetchWal(t)
            | Action::ListWal(t)
            | Action::PushWal(t)
            | Action::GetRecord(t)
            | Action::ListRecords(t)
            | Action::PutRecord(t)
            | Action::DeleteRecord(t)
            | Action::VerifyTenant(t)
            | Action::Switchover(t)
            | Action::Failover(t)
            | Action::SetMode(t) => Some(t),
        }
    }

    /// Whether the action needs the admin role: such actions are written to the audit log.
    pub fn is_admin(&self) -> bool {
        matches!(self.need(), Need::Admin)
    }

    fn need(&self) -> Need {
        match self {
            Action::ViewCluster
            | Action::GetTenant(_)
            | Action::TenantHistory(_)
            | Action::FetchWal(_)
            | Action::ListWal(_)
            | Action::GetRecord(_)
            | Action::ListRecords(_) => Need::Read,
            // Verification repairs damaged chunks, so it is not a read.
            Action::PushWal(_) | Action::PutRecord(_) | Action::DeleteRecord(_) | Action::VerifyTenant(_) => {
                Need::Write
            }
            Action::InitCluster
            | Action::CreateTenant(_)
            | Action::Switchover(_)
            | Action::Failover(_)
            | Action::SetMode(_)
            | Action::ReadAudit => Need::Admin,
        }
    }
}

/// The authenticated caller: the common name of its certificate (for messages and logs) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub role: Role,
}

/// Why a call was not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No certificate, or one whose role cannot be read: the caller is nobody we know.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {subject:?} (role {role}) may not {action}{}", on_tenant(.tenant))]
    Denied { subject: String, role: String, action: &'static str, tenant: Option<String> },
}

fn on_tenant(tenant: &Option<String>) -> String {
    tenant.as_ref().map(|t| format!(" on tenant {t:?}")).unwrap_or_default()
}

impl Subject {
    /// The subject of a connection's verified client certificate chain (leaf first).
    pub fn from_peer_certs(certs: Option<&[CertificateDer<'static>]>) -> Result<Subject, AuthError> {
        let leaf = certs
            .and_then(|c| c.first())
            .ok_or_else(|| AuthError::Unauthenticated("the connection presented no client certificate".into()))?;
        let name = tetrad_config::certs::cert_common_name(leaf).unwrap_or_else(|| "<no common name>".into());
        match role_from_cert_der(leaf) {
            Ok(Some(role)) => Ok(Subject { name, role }),
            Ok(None) => Err(AuthError::Unauthenticated(format!(
                "the certificate of {name:?} carries no tetrad role; issue one with `tetradctl certs issue`"
            ))),
            Err(e) => {
                Err(AuthError::Unauthenticated(format!("the certificate of {name:?} has an unreadable role: {e}")))
            }
        }
    }

    /// Whether the subject may see `tenant` in cluster-wide views (`status`, `tenant list`).
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Tenant { tenant: own, .. } => own == tenant,
            Role::Node { .. } => false,
        }
    }
}

/// Whether `subject` may do `action`.
pub fn authorize(subject: &Subject, action: &Action<'_>) -> Result<(), AuthError> {
    let allowed = match (&subject.role, action.need()) {
        (Role::Admin, _) => true,
        (Role::Node { .. }, _) => false,
        (Role::Tenant { .. }, Need::Admin) => false,
        (Role::Tenant { tenant, read_only }, need) => {
            let own = action.tenant().is_none_or(|t| t == tenant);
            own && (matches!(need, Need::Read) || !read_only)
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(AuthError::Denied {
            subject: subject.name.clone(),
            role: subject.role.text(),
            action: action.name(),
            tenant: action.tenant().map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(role: &str) -> Subject {
        Subject { name: "who".into(), role: Role::parse(role).expect("role") }
    }

    fn every_action(t: &str) -> Vec<Action<'_>> {
        vec![
            Action::ViewCluster,
            Action::InitCluster,
            Action::CreateTenant(t),
            Action::GetTenant(t),
            Action::TenantHistory(t),
            Action::FetchWal(t),
            Action::ListWal(t),
            Action::PushWal(t),
            Action::GetRecord(t),
            Action::ListRecords(t),
            Action::PutRecord(t),
            Action::DeleteRecord(t),
            Action::VerifyTenant(t),
            Action::Switchover(t),
            Action::Failover(t),
            Action::SetMode(t),
            Action::ReadAudit,
        ]
    }

    fn allowed(role: &str, tenant: &str) -> Vec<&'static str> {
        let s = subject(role);
        every_action(tenant).iter().filter(|a| authorize(&s, a).is_ok()).map(|a| a.name()).collect()
    }

    #[test]
    fn each_role_may_do_exactly_its_actions() {
        assert_eq!(allowed("admin", "a").len(), every_action("a").len());
        assert_eq!(
            allowed("tenant:a", "a"),
            [
                "Status/ListTenants",
                "GetTenant",
                "TenantHistory",
                "FetchWal",
                "ListWal",
                "PushWal",
                "GetRecord",
                "ListRecords",
                "PutRecord",
                "DeleteRecord",
                "VerifyTenant"
            ]
        );
        assert_eq!(
            allowed("tenant:a:read", "a"),
            ["Status/ListTenants", "GetTenant", "TenantHistory", "FetchWal", "ListWal", "GetRecord", "ListRecords"]
        );
        assert_eq!(allowed("tenant:a", "b"), ["Status/ListTenants"]);
        assert_eq!(allowed("tenant:a:read", "b"), ["Status/ListTenants"]);
        assert!(allowed("node:1:n:r", "a").is_empty());
    }

    #[test]
    fn a_refusal_names_the_subject_role_action_and_tenant() {
        let err = authorize(&subject("tenant:a:read"), &Action::PushWal("a")).expect_err("refused");
        assert_eq!(err.to_string(), "permission denied: \"who\" (role tenant:a:read) may not PushWal on tenant \"a\"");
        let err = authorize(&subject("tenant:a"), &Action::InitCluster).expect_err("refused");
        assert_eq!(err.to_string(), "permission denied: \"who\" (role tenant:a) may not InitCluster");
    }

    #[test]
    fn views_are_filtered_to_the_subjects_tenant() {
        assert!(subject("admin").sees_tenant("b"));
        assert!(subject("tenant:a:read").sees_tenant("a"));
        assert!(!subject("tenant:a").sees_tenant("b"));
        assert!(!subject("node:1:n:r").sees_tenant("a"));
    }

    #[test]
    fn no_certificate_or_no_role_is_unauthenticated() {
        assert!(matches!(Subject::from_peer_certs(None), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(Subject::from_peer_certs(Some(&[])), Err(AuthError::Unauthenticated(_))));
        let ca = tetrad_config::certs::CaBundle::generate("t").expect("ca");
        let plain = tetrad_config::certs::single_cert(&ca.issue("x").expect("cert").cert_pem, "c").expect("der");
        let err = Subject::from_peer_certs(Some(&[plain])).expect_err("no role");
        assert!(err.to_string().contains("carries no tetrad role"), "{err}");
        let admin = ca.issue_client("ops", &Role::Admin).expect("cert");
        let admin = tetrad_config::certs::single_cert(&admin.cert_pem, "c").expect("der");
        assert_eq!(Subject::from_peer_certs(Some(&[admin])), Ok(Subject { name: "ops".into(), role: Role::Admin }));
    }
}
