//! Cluster certificates as material: the cluster CA, the certificates it issues to nodes and to
//! `tetradctl`, their PEM form, and reading a peer's name out of its certificate. The rustls
//! configurations built from them live in the node (`tetrad_node::tls`, which re-exports this
//! module's items), so that tetradctl can make a cluster's certificates without compiling rustls
//! or QUIC.
//!
//! Every node and every operator tool holds a certificate issued by one per-cluster CA, and each
//! side of every connection must present one (mutual TLS). A certificate names its holder in a DNS
//! subject alternative name (`eu-west-2`, `tetradctl`); it also names `localhost`, `127.0.0.1` and
//! `::1` so that a cluster run on one machine can be dialled by loopback address.
//!
//! Peer identity: the dialling side asks rustls to check the server's certificate against the
//! peer's name, as for any TLS server. The accepting side has no name to check against, so it reads
//! the DNS names out of the already-verified client certificate with [`cert_dns_names`] (rustls's
//! own certificate parser, webpki) and looks them up in its table of peers; see
//! `tetrad_node::net::quic`. Names are matched exactly, never by pattern, and `localhost` is
//! reserved so that the name every certificate carries can never stand for a node.
//!
//! Keys are ECDSA P-256. The CA is stored as two PEM strings only ([`CaBundle`]); to sign with it
//! again, [`CaBundle::issue`] rebuilds rcgen's view of the CA from the cluster name in its common
//! name and refuses to go on unless that rebuilds the CA's subject byte for byte, because a
//! certificate whose issuer does not match its CA's subject exactly would be rejected by every
//! verifier.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, DnsName, PrivateKeyDer};

use crate::role::{Role, ROLE_OID};

/// The name every issued certificate carries besides its holder's, so it can never name a node.
pub const RESERVED_NAME: &str = "localhost";

/// The CA's common name is this prefix followed by the cluster name; [`CaBundle::issue`] relies on it.
const CA_COMMON_NAME_PREFIX: &str = "tetrad cluster CA ";

/// X.520 bounds a common name to 64 characters; this leaves room for the prefix.
const CLUSTER_NAME_MAX_CHARS: usize = 64 - CA_COMMON_NAME_PREFIX.len();

/// A DNS label is at most 63 bytes; node names are single labels or short dotted names.
const NODE_NAME_MAX_BYTES: usize = 63;

const CA_VALIDITY_YEARS: u32 = 10;
const NODE_CERT_VALIDITY_YEARS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not valid PEM: {reason}")]
    NotPem { what: &'static str, reason: String },
    #[error("{what} contains no PEM certificate")]
    NoCertificate { what: &'static str },
    #[error("{what} contains more than one certificate; expected exactly one")]
    TooManyCertificates { what: &'static str },
    #[error("{what} contains no PEM private key (expected PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey { what: &'static str },
    #[error("{what} could not be parsed as an X.509 certificate: {reason}")]
    BadCertificate { what: &'static str, reason: String },
    #[error("{what} is not a usable private key: {reason}")]
    BadKey { what: &'static str, reason: String },
    #[error("the CA private key does not belong to the CA certificate")]
    KeyMismatch,
    #[error(
        "the CA certificate was not made by `CaBundle::generate` (its subject is not a single common \
         name starting with {CA_COMMON_NAME_PREFIX:?}), so tetrad cannot issue certificates with it"
    )]
    ForeignCa,
    #[error("{name:?} is not a valid {kind} name: {reason}")]
    InvalidName { kind: &'static str, name: String, reason: &'static str },
    #[error("could not generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("could not build the TLS {side} configuration: {reason}")]
    Config { side: &'static str, reason: String },
}

/// The cluster's certificate authority: its certificate and private key, both PEM.
#[derive(Clone)]
pub struct CaBundle {
    pub cert_pem: String,
    pub key_pem: String,
}

// The key must never reach a log line through `{:?}`.
impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// A certificate issued by the cluster CA to one node or tool, and its private key, both PEM.
#[derive(Clone)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl CaBundle {
    /// Generates a new self-signed CA for the cluster `cluster_name`.
    pub fn generate(cluster_name: &str) -> Result<CaBundle, TlsError> {
        validate_cluster_name(cluster_name)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| TlsError::Generate { what: "the CA key", source })?;
        let cert = ca_params(cluster_name, now_ms())?
            .self_signed(&key)
            .map_err(|source| TlsError::Generate { what: "the CA certificate", source })?;
        Ok(CaBundle { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a certificate for `name` (a node such as `eu-west-2`, or a tool such as `tetradctl`),
    /// valid for both server and client authentication.
    pub fn issue(&self, name: &str) -> Result<NodeCert, TlsError> {
        validate_node_name(name)?;
        let (ca_cert, ca_key) = self.signer()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| TlsError::Generate { what: "the node key", source })?;
        let cert = node_params(name, now_ms())?
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|source| TlsError::Generate { what: "the node certificate", source })?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a node's certificate: as [`CaBundle::issue`], plus the node role bound to the
    /// node's id, name and region, which the node-to-node port requires.
    pub fn issue_node(&self, name: &str, id: u64, region: &str) -> Result<NodeCert, TlsError> {
        validate_node_name(name)?;
        let role = Role::Node { id, name: name.to_owned(), region: region.to_owned() };
        Role::parse(&role.text()).map_err(|_| TlsError::InvalidName {
            kind: "node",
            name: role.text(),
            reason: "a node role needs a name and region of a-z, 0-9, '-' and '_'",
        })?;
        let (ca_cert, ca_key) = self.signer()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| TlsError::Generate { what: "the node key", source })?;
        let mut params = node_params(name, now_ms())?;
        params.custom_extensions.push(role_extension(&role));
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|source| TlsError::Generate { what: "the node certificate", source })?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a client certificate for `name` with `role` (admin or a tenant role): valid for
    /// client authentication only, and naming only `name`, so that it can never pass for a node
    /// (no `localhost` or loopback address, no server authentication, no node role).
    pub fn issue_client(&self, name: &str, role: &Role) -> Result<NodeCert, TlsError> {
        validate_node_name(name)?;
        if matches!(role, Role::Node { .. }) {
            return Err(TlsError::InvalidName {
                kind: "client",
                name: name.to_owned(),
                reason: "node roles are issued with node certificates only",
            });
        }
        let (ca_cert, ca_key) = self.signer()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| TlsError::Generate { what: "the client key", source })?;
        let mut params = node_params(name, now_ms())?;
        params.subject_alt_names = vec![SanType::DnsName(
            name.to_owned()
                .try_into()
                .map_err(|source| TlsError::Generate { what: "a subject alternative name", source })?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.custom_extensions.push(role_extension(role));
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|source| TlsError::Generate { what: "the client certificate", source })?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Rebuilds rcgen's view of the CA from the PEM pair, checking that it signs exactly as the
    /// stored CA would.
    fn signer(&self) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
        let what = "the CA certificate";
        let ca_der = single_cert(&self.cert_pem, what)?;
        let ca = parse_cert(&ca_der, what)?;
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| TlsError::BadKey { what: "the CA private key", reason: e.to_string() })?;
        if ca.subject_public_key_info().as_ref() != key.public_key_der().as_slice() {
            return Err(TlsError::KeyMismatch);
        }
        let cluster_name = common_name_of(ca.subject())
            .and_then(|cn| cn.strip_prefix(CA_COMMON_NAME_PREFIX).map(str::to_owned))
            .ok_or(TlsError::ForeignCa)?;
        validate_cluster_name(&cluster_name).map_err(|_| TlsError::ForeignCa)?;
        let rebuilt = ca_params(&cluster_name, now_ms())?
            .self_signed(&key)
            .map_err(|source| TlsError::Generate { what: "the CA signer", source })?;
        // Verifiers link a certificate to its CA by comparing the issuer and subject bytes, so the
        // rebuilt subject must be the stored one exactly, not merely equivalent.
        let rebuilt_der = rebuilt.der().clone();
        if parse_cert(&rebuilt_der, "the rebuilt CA certificate")?.subject() != ca.subject() {
            return Err(TlsError::ForeignCa);
        }
        Ok((rebuilt, key))
    }
}

/// The DNS subject alternative names of a DER certificate, in the order the certificate lists
/// them. Only meaningful for a certificate that rustls has already verified against the CA.
pub fn cert_dns_names(cert_der: &[u8]) -> Result<Vec<String>, TlsError> {
    let der = CertificateDer::from(cert_der);
    let cert = parse_cert(&der, "the peer certificate")?;
    Ok(cert.valid_dns_names().map(str::to_owned).collect())
}

/// The common name in a DER certificate's subject, if it has one as UTF-8 or printable text.
/// For people and logs; identity comes from [`cert_dns_names`].
pub fn cert_common_name(cert_der: &[u8]) -> Option<String> {
    let der = CertificateDer::from(cert_der);
    let cert = parse_cert(&der, "certificate").ok()?;
    common_name_of(cert.subject())
}

/// Checks that `name` can name a node or tool in a certificate and in a peer table: a DNS name,
/// not an IP address, not [`RESERVED_NAME`].
pub fn validate_node_name(name: &str) -> Result<(), TlsError> {
    let invalid = |reason| TlsError::InvalidName { kind: "node", name: name.to_owned(), reason };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > NODE_NAME_MAX_BYTES {
        return Err(invalid("it is longer than 63 bytes"));
    }
    if name.eq_ignore_ascii_case(RESERVED_NAME) {
        return Err(invalid("`localhost` is in every certificate, so it cannot name one node"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid("it is an IP address; nodes are named, not addressed"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        // DNS names compare case-insensitively but peer tables compare exactly; one spelling only.
        return Err(invalid("it has upper-case letters"));
    }
    if name.contains('*') || DnsName::try_from(name).is_err() {
        return Err(invalid("it is not a DNS name (letters, digits and '-', dot-separated)"));
    }
    Ok(())
}

fn validate_cluster_name(name: &str) -> Result<(), TlsError> {
    let invalid = |reason| TlsError::InvalidName { kind: "cluster", name: name.to_owned(), reason };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.chars().count() > CLUSTER_NAME_MAX_CHARS {
        return Err(invalid("it is longer than 46 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it has control characters"));
    }
    Ok(())
}

/// The wall clock, in milliseconds since the Unix epoch, for the validity dates of new
/// certificates: they are made by tetradctl (`cluster up`) and by tests, never by node logic, so
/// this is not behind the node's clock seam.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The role as a non-critical extension (see `crate::role`).
fn role_extension(role: &Role) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(ROLE_OID, role.encode_value());
    ext.set_criticality(false);
    ext
}

fn ca_params(cluster_name: &str, now_ms: u64) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("{CA_COMMON_NAME_PREFIX}{cluster_name}"));
    // The CA signs node certificates directly; it may not create intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, now_ms, CA_VALIDITY_YEARS)?;
    Ok(params)
}

fn node_params(name: &str, now_ms: u64) -> Result<CertificateParams, TlsError> {
    let dns = |s: &str| {
        s.to_owned()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|source| TlsError::Generate { what: "a subject alternative name", source })
    };
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        dns(name)?,
        dns(RESERVED_NAME)?,
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now_ms, NODE_CERT_VALIDITY_YEARS)?;
    Ok(params)
}

/// Valid from a day before `now_ms` (so a peer whose clock is a little behind accepts it) for
/// `years` years.
fn set_validity(params: &mut CertificateParams, now_ms: u64, years: u32) -> Result<(), TlsError> {
    use chrono::Datelike;
    let out_of_range =
        || TlsError::Config { side: "certificate", reason: format!("the clock reads {now_ms} ms, out of range") };
    let now = i64::try_from(now_ms).ok().and_then(chrono::DateTime::from_timestamp_millis).ok_or_else(out_of_range)?;
    let start = now.date_naive().checked_sub_days(chrono::Days::new(1)).ok_or_else(out_of_range)?;
    // Adding months clamps 29 February to the 28th in a non-leap year, where adding to the
    // year field would make an invalid date.
    let end = start.checked_add_months(chrono::Months::new(12 * years)).ok_or_else(out_of_range)?;
    let ymd = |d: chrono::NaiveDate| -> Result<_, TlsError> {
        let month = u8::try_from(d.month()).map_err(|_| out_of_range())?;
        let day = u8::try_from(d.day()).map_err(|_| out_of_range())?;
        Ok(rcgen::date_time_ymd(d.year(), month, day))
    };
    params.not_before = ymd(start)?;
    params.not_after = ymd(end)?;
    Ok(())
}

fn parse_cert<'a>(der: &'a CertificateDer<'a>, what: &'static str) -> Result<webpki::EndEntityCert<'a>, TlsError> {
    webpki::EndEntityCert::try_from(der).map_err(|e| TlsError::BadCertificate { what, reason: e.to_string() })
}

/// Every certificate in `pem`, in order; `what` names the input in errors. At least one.
pub fn certs_from_pem(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

/// The one certificate in `pem`; `what` names the input in errors.
pub fn single_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    let mut certs = certs_from_pem(pem, what)?;
    if certs.len() > 1 {
        return Err(TlsError::TooManyCertificates { what });
    }
    certs.pop().ok_or(TlsError::NoCertificate { what })
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "the node private key";
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TlsError::NotPem { what, reason: e.to_string() })?
        .ok_or(TlsError::NoPrivateKey { what })
}

pub(crate) const DER_SEQUENCE: u8 = 0x30;
const DER_SET: u8 = 0x31;
const DER_OID: u8 = 0x06;
const DER_UTF8_STRING: u8 = 0x0c;
const DER_PRINTABLE_STRING: u8 = 0x13;
/// 2.5.4.3, id-at-commonName.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The first common name in the contents of an X.501 Name (a SEQUENCE OF SET OF
/// AttributeTypeAndValue), as webpki hands them out. Returns `None` on anything malformed.
fn common_name_of(name: &[u8]) -> Option<String> {
    let mut rdns = name;
    while !rdns.is_empty() {
        let (rdn, rest) = der_split(rdns, DER_SET)?;
        rdns = rest;
        let mut attributes = rdn;
        while !attributes.is_empty() {
            let (attribute, rest) = der_split(attributes, DER_SEQUENCE)?;
            attributes = rest;
            let (oid, value) = der_split(attribute, DER_OID)?;
            if oid != OID_COMMON_NAME {
                continue;
            }
            let tag = *value.first()?;
            if tag != DER_UTF8_STRING && tag != DER_PRINTABLE_STRING {
                return None;
            }
            let (text, trailing) = der_split(value, tag)?;
            if !trailing.is_empty() {
                return None;
            }
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

/// Splits one DER element of any low-numbered tag off the front of `input`: its tag, contents and
/// what follows. Rejects high tag numbers (never in a certificate), the indefinite length form
/// and lengths of more than four bytes.
pub(crate) fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let &tag = input.first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (contents, rest) = der_split(input, tag)?;
    Some((tag, contents, rest))
}

/// Splits one DER element tagged `tag` off the front of `input`, returning its contents and what
/// follows it. Rejects the indefinite length form (not DER) and lengths of more than four bytes.
fn der_split(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let len_bytes = usize::from(first & 0x7f);
        if len_bytes == 0 || len_bytes > 4 || rest.len() < len_bytes {
            return None;
        }
        let (len, rest) = rest.split_at(len_bytes);
        (len.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        single_cert(pem, "test certificate").expect("one certificate")
    }

    #[test]
    fn names_are_read_back_from_issued_certificates() {
        let ca = CaBundle::generate("prod eu").expect("CA");
        let tool = ca.issue("tetradctl").expect("tool cert");
        assert_eq!(cert_common_name(&der(&ca.cert_pem)).as_deref(), Some("tetrad cluster CA prod eu"));
        assert_eq!(cert_common_name(&der(&tool.cert_pem)).as_deref(), Some("tetradctl"));
        assert_eq!(cert_dns_names(&der(&tool.cert_pem)).expect("names"), vec!["tetradctl", "localhost"]);
        assert!(cert_dns_names(&der(&ca.cert_pem)).expect("names").is_empty());
    }

    #[test]
    fn roles_are_read_back_from_issued_certificates() {
        use crate::role::role_from_cert_der;
        let ca = CaBundle::generate("prod").expect("CA");
        let node = ca.issue_node("eu-west-1", 201, "eu-west").expect("node cert");
        let role = role_from_cert_der(&der(&node.cert_pem)).expect("parses");
        assert_eq!(role, Some(Role::Node { id: 201, name: "eu-west-1".into(), region: "eu-west".into() }));
        assert_eq!(cert_dns_names(&der(&node.cert_pem)).expect("names"), vec!["eu-west-1", "localhost"]);
        let reader = Role::Tenant { tenant: "acme".into(), read_only: true };
        let client = ca.issue_client("acme-ro", &reader).expect("client cert");
        assert_eq!(role_from_cert_der(&der(&client.cert_pem)), Ok(Some(reader)));
        assert_eq!(cert_dns_names(&der(&client.cert_pem)).expect("names"), vec!["acme-ro"]);
        assert_eq!(role_from_cert_der(&der(&ca.issue("plain").expect("cert").cert_pem)), Ok(None));
        assert_eq!(role_from_cert_der(&der(&ca.cert_pem)), Ok(None));
        let node_role = Role::Node { id: 1, name: "x".into(), region: "y".into() };
        assert!(ca.issue_client("x", &node_role).is_err(), "a client certificate cannot carry a node role");
    }

    #[test]
    fn role_parsing_never_panics_on_corrupted_certificates() {
        let ca = CaBundle::generate("prod").expect("CA");
        let cert = der(&ca.issue_client("ops", &Role::Admin).expect("cert").cert_pem).to_vec();
        for len in 0..cert.len() {
            let _ = crate::role::role_from_cert_der(&cert[..len]);
        }
        for i in 0..cert.len() {
            let mut corrupted = cert.clone();
            corrupted[i] ^= 0xff;
            let _ = crate::role::role_from_cert_der(&corrupted);
        }
    }

    #[test]
    fn issuing_with_a_key_of_another_ca_is_refused() {
        let ca = CaBundle::generate("prod").expect("CA");
        let other = CaBundle::generate("prod").expect("other CA");
        let mixed = CaBundle { cert_pem: ca.cert_pem.clone(), key_pem: other.key_pem };
        assert!(matches!(mixed.issue("eu-west-2"), Err(TlsError::KeyMismatch)));
    }

    #[test]
    fn issuing_with_a_ca_not_made_by_tetrad_is_refused() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "acme");
        params.distinguished_name.push(DnType::CommonName, "tetrad cluster CA prod");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("foreign CA");
        let foreign = CaBundle { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        assert!(matches!(foreign.issue("eu-west-2"), Err(TlsError::ForeignCa)));
    }

    #[test]
    fn node_names_are_checked() {
        for ok in ["eu-west-2", "tetradctl", "node-1.prod"] {
            validate_node_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let ca = CaBundle::generate("prod").expect("CA");
        for bad in
            ["", "localhost", "LocalHost", "127.0.0.1", "::1", "has space", "*.prod", "EU-west-2", &"a".repeat(64)]
        {
            assert!(matches!(validate_node_name(bad), Err(TlsError::InvalidName { .. })), "{bad:?} accepted");
            assert!(matches!(ca.issue(bad), Err(TlsError::InvalidName { .. })), "{bad:?} issued");
        }
        assert!(matches!(CaBundle::generate(""), Err(TlsError::InvalidName { .. })));
        assert!(matches!(CaBundle::generate(&"c".repeat(47)), Err(TlsError::InvalidName { .. })));
    }

    #[test]
    fn issuing_with_a_malformed_ca_is_refused_with_the_reason() {
        let ca = CaBundle::generate("prod").expect("CA");
        let garbage = CaBundle { cert_pem: ca.cert_pem.clone(), key_pem: "garbage".into() };
        assert!(matches!(garbage.issue("eu-west-2"), Err(TlsError::BadKey { .. })));
        let two = CaBundle { cert_pem: format!("{}{}", ca.cert_pem, ca.cert_pem), key_pem: ca.key_pem.clone() };
        assert!(matches!(two.issue("eu-west-2"), Err(TlsError::TooManyCertificates { .. })));
        let none = CaBundle { cert_pem: "not a certificate".into(), key_pem: ca.key_pem.clone() };
        assert!(matches!(none.issue("eu-west-2"), Err(TlsError::NoCertificate { .. })));
    }

    #[test]
    fn pem_readers_name_their_input() {
        let ca = CaBundle::generate("prod").expect("CA");
        let node = ca.issue("eu-west-2").expect("cert");
        let err = certs_from_pem("not a certificate", "the node certificate").expect_err("no cert");
        assert_eq!(err.to_string(), "the node certificate contains no PEM certificate");
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = certs_from_pem(broken, "the CA certificate").expect_err("bad base64");
        assert!(err.to_string().starts_with("the CA certificate is not valid PEM"), "{err}");
        assert!(matches!(key_from_pem(&node.cert_pem), Err(TlsError::NoPrivateKey { .. })));
        assert!(key_from_pem(&node.key_pem).is_ok());
        assert_eq!(certs_from_pem(&format!("{}{}", node.cert_pem, ca.cert_pem), "chain").expect("two").len(), 2);
    }

    #[test]
    fn private_keys_are_not_printed_by_debug() {
        let ca = CaBundle::generate("prod").expect("CA");
        let node = ca.issue("eu-west-2").expect("cert");
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
        assert!(!format!("{node:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn der_split_reads_short_and_long_lengths_and_rejects_bad_ones() {
        assert_eq!(der_split(&[0x30, 0x02, 1, 2, 9], 0x30), Some((&[1u8, 2][..], &[9u8][..])));
        let mut long = vec![0x0c, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(der_split(&long, 0x0c).map(|(c, r)| (c.len(), r.len())), Some((256, 0)));
        assert_eq!(der_split(&[0x31, 0x02, 1, 2], 0x30), None, "wrong tag");
        assert_eq!(der_split(&[0x30, 0x03, 1, 2], 0x30), None, "short contents");
        assert_eq!(der_split(&[0x30, 0x80, 0, 0], 0x30), None, "indefinite length");
        assert_eq!(der_split(&[0x30, 0x85, 1, 1, 1, 1, 1], 0x30), None, "five length bytes");
        assert_eq!(der_split(&[0x30, 0x82, 0x01], 0x30), None, "truncated length");
        assert_eq!(der_split(&[0x30], 0x30), None);
        assert_eq!(der_split(&[], 0x30), None);
    }

    #[test]
    fn common_name_walk_handles_long_names_and_other_attributes() {
        let cn = "c".repeat(200); // forces the long length form, 0x81 0xc8
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, rcgen::DnValue::PrintableString("SE".try_into().unwrap()));
        params.distinguished_name.push(DnType::OrganizationName, "tetrad");
        params.distinguished_name.push(DnType::CommonName, cn.as_str());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(cert_common_name(cert.der()), Some(cn));

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "no common name");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(cert_common_name(cert.der()), None);
    }

    #[test]
    fn common_name_walk_never_panics_on_truncated_or_corrupted_names() {
        let ca = CaBundle::generate("prod").expect("CA");
        let ca_der = der(&ca.cert_pem);
        let subject = parse_cert(&ca_der, "CA").expect("parse").subject().to_vec();
        assert_eq!(common_name_of(&subject).as_deref(), Some("tetrad cluster CA prod"));
        for len in 0..subject.len() {
            // A prefix that cuts an element short must not yield a name.
            assert_eq!(common_name_of(&subject[..len]), None, "prefix of {len} bytes");
        }
        for i in 0..subject.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut corrupted = subject.clone();
                corrupted[i] ^= flip;
                let _ = common_name_of(&corrupted);
            }
        }
    }
}
