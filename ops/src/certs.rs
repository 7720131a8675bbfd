//! `tetradctl certs ...`: a cluster CA and the client identities it issues, on disk.
//!
//! ```text
//! certs init --out DIR                      DIR/ca.crt, DIR/ca.key (0600)
//! certs issue NAME --role R --out DIR       DIR/NAME.crt, DIR/NAME.key (0600), DIR/ca.crt
//! ```
//!
//! `issue` signs with the CA named by `--ca DIR` (`DIR/ca.crt`, `DIR/ca.key`) or else with the
//! cluster directory's (`ca.pem`, `ca.key`), and refuses a NAME that is one of the cluster's node
//! names: a certificate's DNS name is how the node port tells nodes apart.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tetrad_config::certs::CaBundle;
use tetrad_config::role::Role;

use crate::cluster_dir::{write_file, ClusterFile, Layout};

/// Where `certs issue` finds the CA.
pub enum CaSource<'a> {
    /// `DIR/ca.crt` and `DIR/ca.key`, as `certs init` writes them.
    Dir(&'a Path),
    /// A cluster directory's `ca.pem` and `ca.key`.
    Cluster(&'a Layout),
}

/// Makes a new CA for `cluster_name` in `out`; refuses to overwrite one.
pub fn init(out: &Path, cluster_name: &str) -> anyhow::Result<PathBuf> {
    let cert = out.join("ca.crt");
    anyhow::ensure!(!cert.exists(), "{} exists; refusing to replace a CA", cert.display());
    let ca = CaBundle::generate(cluster_name).context("cannot generate the CA")?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_file(&out.join("ca.key"), &ca.key_pem, true)?;
    write_file(&cert, &ca.cert_pem, false)?;
    Ok(cert)
}

fn load_ca(source: &CaSource<'_>) -> anyhow::Result<CaBundle> {
    let (cert, key) = match source {
        CaSource::Dir(dir) => (dir.join("ca.crt"), dir.join("ca.key")),
        CaSource::Cluster(layout) => (layout.ca_cert(), layout.ca_key()),
    };
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read the CA file {}", p.display()));
    Ok(CaBundle { cert_pem: read(&cert)?, key_pem: read(&key)? })
}

/// Issues `name` with `role` into `out`; `nodes` are the names it may not take. Returns the
/// identity's path (`out/NAME`), as `--identity` takes it.
pub fn issue(source: &CaSource<'_>, name: &str, role: &Role, out: &Path, nodes: &[String]) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(!nodes.iter().any(|n| n == name), "{name:?} is a node's name; pick another name for a client");
    anyhow::ensure!(!matches!(role, Role::Node { .. }), "node roles are issued by `cluster up`, not to clients");
    let ca = load_ca(source)?;
    let cert = ca.issue_client(name, role).with_context(|| format!("cannot issue a certificate for {name:?}"))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_file(&out.join(format!("{name}.key")), &cert.key_pem, true)?;
    write_file(&out.join(format!("{name}.crt")), &cert.cert_pem, false)?;
    write_file(&out.join("ca.crt"), &ca.cert_pem, false)?;
    Ok(out.join(name))
}

/// The node names of the cluster in `layout`, if it has a cluster file.
pub fn node_names(layout: &Layout) -> Vec<String> {
    ClusterFile::load(&layout.root).map(|c| c.nodes.into_iter().map(|n| n.name).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn init_then_issue_writes_an_identity_with_a_private_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca_dir = tmp.path().join("ca");
        init(&ca_dir, "test").expect("init");
        assert!(init(&ca_dir, "test").is_err(), "a second init would replace the CA");
        let out = tmp.path().join("ids");
        let role = Role::Tenant { tenant: "acme".into(), read_only: false };
        let path = issue(&CaSource::Dir(&ca_dir), "acme-app", &role, &out, &[]).expect("issue");
        assert_eq!(path, out.join("acme-app"));
        let mode = |p: PathBuf| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(out.join("acme-app.key")), 0o600);
        assert_eq!(mode(ca_dir.join("ca.key")), 0o600);
        let der = tetrad_config::certs::single_cert(
            &std::fs::read_to_string(out.join("acme-app.crt")).expect("cert"),
            "cert",
        )
        .expect("der");
        assert_eq!(tetrad_config::role::role_from_cert_der(&der), Ok(Some(role)));
        assert_eq!(
            std::fs::read_to_string(out.join("ca.crt")).expect("ca"),
            std::fs::read_to_string(ca_dir.join("ca.crt")).expect("ca")
        );
        crate::client::Identity::load(&path).expect("loads as an identity");
    }

    #[test]
    fn a_node_name_or_a_node_role_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), "test").expect("init");
        let err = issue(&CaSource::Dir(tmp.path()), "eu-west-1", &Role::Admin, tmp.path(), &["eu-west-1".into()])
            .expect_err("a node's name");
        assert!(err.to_string().contains("is a node's name"), "{err}");
        let node = Role::Node { id: 1, name: "x".into(), region: "y".into() };
        assert!(issue(&CaSource::Dir(tmp.path()), "x", &node, tmp.path(), &[]).is_err());
        assert!(!tmp.path().join("eu-west-1.crt").exists());
    }
}
