//! Roles carried in certificates: what the holder of a cluster certificate may do.
//!
//! A role travels in a private, non-critical X.509 extension ([`ROLE_OID`]) whose value is a DER
//! UTF8String `"<version>:<role>"`, today always version `1`:
//!
//! ```text
//! 1:admin                         everything, on every tenant
//! 1:tenant:T                      tenant T's reads and writes (push, fetch, list, show, verify)
//! 1:tenant:T:read                 tenant T's reads only (fetch, list, show, history, status)
//! 1:node:ID:NAME:REGION           a cluster node; the only role the node-to-node port accepts
//! ```
//!
//! Non-critical on purpose: a verifier that does not know the extension (rustls, any TLS
//! library) must still accept the certificate; only tetrad reads it, and only after rustls has
//! verified the certificate against the cluster CA. Reading is strict: a certificate with the
//! extension twice, a value of another version, trailing bytes, or a role that does not parse is
//! an error, never a lesser role, so that a future encoding cannot be misread as today's.
//!
//! The OID is under the `2.25` arc (ITU-T X.667, OIDs made from a number nobody else picks, no
//! registration), with a random 63-bit number standing for tetrad: `2.25.5216934405721108937.1`.
//! A deployment that owns a Private Enterprise Number may move it there; the version in the value
//! then still tells old and new apart.

use std::fmt;

use crate::certs::{der_next, DER_SEQUENCE};

/// The role extension's OID, as rcgen takes it.
pub const ROLE_OID: &[u64] = &[2, 25, 5_216_934_405_721_108_937, 1];

/// The version of the value encoding written today.
pub const ROLE_VERSION: u32 = 1;

/// Longest role value accepted: a tenant role with a 63-byte name is far below it.
pub const ROLE_VALUE_MAX_BYTES: usize = 256;

const TENANT_NAME_MAX_BYTES: usize = 63;

/// What a certificate's holder may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// One tenant's reads and, unless `read_only`, its writes.
    Tenant {
        tenant: String,
        read_only: bool,
    },
    /// A node of the cluster, bound to its id, name and region.
    Node {
        id: u64,
        name: String,
        region: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("the certificate is not well-formed DER")]
    BadCertificate,
    #[error("the certificate carries the tetrad role extension more than once")]
    Duplicate,
    #[error("the role extension is not a DER UTF8String")]
    BadValue,
    #[error("the role value {0:?} has no version prefix")]
    NoVersion(String),
    #[error("the role value has version {0:?}; this build reads version {ROLE_VERSION} only")]
    UnknownVersion(String),
    #[error("{0:?} is not a role (expected admin, tenant:T, tenant:T:read or node:ID:NAME:REGION)")]
    Unknown(String),
}

impl Role {
    /// The role's text without the version, as shown to people: `admin`, `tenant:acme:read`.
    pub fn text(&self) -> String {
        match self {
            Role::Admin => "admin".to_owned(),
            Role::Tenant { tenant, read_only: false } => format!("tenant:{tenant}"),
            Role::Tenant { tenant, read_only: true } => format!("tenant:{tenant}:read"),
            Role::Node { id, name, region } => format!("node:{id}:{name}:{region}"),
        }
    }

    /// Parses the text form ([`Role::text`]), e.g. from `tetradctl certs issue --role`.
    pub fn parse(text: &str) -> Result<Role, RoleError> {
        let unknown = || RoleError::Unknown(text.to_owned());
        let parts: Vec<&str> = text.split(':').collect();
        let role = match parts.as_slice() {
            ["admin"] => Role::Admin,
            ["tenant", t] => Role::Tenant { tenant: (*t).to_owned(), read_only: false },
            ["tenant", t, "read"] => Role::Tenant { tenant: (*t).to_owned(), read_only: true },
            ["node", id, name, region] => {
                // Digits only: `parse` would also take a leading '+'.
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || (id.len() > 1 && id.starts_with('0')) {
                    return Err(unknown());
                }
                let id = id.parse().map_err(|_| unknown())?;
                Role::Node { id, name: (*name).to_owned(), region: (*region).to_owned() }
            }
            _ => return Err(unknown()),
        };
        match &role {
            Role::Tenant { tenant, .. } if !is_plain_name(tenant) => return Err(unknown()),
            Role::Node { name, region, .. } if !is_plain_name(name) || !is_plain_name(region) => return Err(unknown()),
            _ => {}
        }
        Ok(role)
    }

    /// The extension's value (the contents of its OCTET STRING): a DER UTF8String.
    pub fn encode_value(&self) -> Vec<u8> {
        let text = format!("{ROLE_VERSION}:{}", self.text());
        assert!(text.len() <= ROLE_VALUE_MAX_BYTES, "roles are built from validated names");
        let mut out = vec![DER_UTF8_STRING];
        if text.len() < 0x80 {
            out.push(text.len() as u8);
        } else {
            out.extend([0x81, text.len() as u8]);
        }
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// Reads the extension's value back, strictly.
    pub fn decode_value(value: &[u8]) -> Result<Role, RoleError> {
        let (tag, contents, rest) = der_next(value).ok_or(RoleError::BadValue)?;
        if tag != DER_UTF8_STRING || !rest.is_empty() || contents.len() > ROLE_VALUE_MAX_BYTES {
            return Err(RoleError::BadValue);
        }
        let text = std::str::from_utf8(contents).map_err(|_| RoleError::BadValue)?;
        let (version, role) = text.split_once(':').ok_or_else(|| RoleError::NoVersion(text.to_owned()))?;
        if version != ROLE_VERSION.to_string() {
            return Err(RoleError::UnknownVersion(version.to_owned()));
        }
        Role::parse(role)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The names a role may carry: tenant names as the node accepts them (1-63 of a-z, 0-9, '-' and
/// '_', not starting with '-'); node names and regions fit the same rule.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TENANT_NAME_MAX_BYTES
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

const DER_UTF8_STRING: u8 = 0x0c;
const DER_OID: u8 = 0x06;
const DER_BOOLEAN: u8 = 0x01;
const DER_OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` inside a TBSCertificate.
const DER_EXTENSIONS: u8 = 0xa3;

/// The DER contents of [`ROLE_OID`].
fn role_oid_der() -> Vec<u8> {
    let mut out = vec![(ROLE_OID[0] * 40 + ROLE_OID[1]) as u8];
    for &arc in &ROLE_OID[2..] {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push(((rest & 0x7f) as u8) | 0x80);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    out
}

/// The role in a DER certificate: `Ok(None)` when it carries no role extension. Only meaningful
/// for a certificate that rustls has already verified against the cluster CA; on any other bytes
/// it returns an error and never panics (a fuzz target, `cert_role`).
pub fn role_from_cert_der(cert: &[u8]) -> Result<Option<Role>, RoleError> {
    let bad = RoleError::BadCertificate;
    let (tag, certificate, rest) = der_next(cert).ok_or(bad.clone())?;
    if tag != DER_SEQUENCE || !rest.is_empty() {
        return Err(bad);
    }
    let (tag, mut tbs, _) = der_next(certificate).ok_or(bad.clone())?;
    if tag != DER_SEQUENCE {
        return Err(bad);
    }
    let mut extensions = None;
    while !tbs.is_empty() {
        let (tag, contents, rest) = der_next(tbs).ok_or(bad.clone())?;
        tbs = rest;
        if tag == DER_EXTENSIONS {
            extensions = Some(contents);
        }
    }
    let Some(extensions) = extensions else { return Ok(None) };
    let (tag, mut list, rest) = der_next(extensions).ok_or(bad.clone())?;
    if tag != DER_SEQUENCE || !rest.is_empty() {
        return Err(bad);
    }
    let oid = role_oid_der();
    let mut found = None;
    while !list.is_empty() {
        let (tag, extension, rest) = der_next(list).ok_or(bad.clone())?;
        list = rest;
        if tag != DER_SEQUENCE {
            return Err(bad);
        }
        let (tag, id, mut fields) = der_next(extension).ok_or(bad.clone())?;
        if tag != DER_OID {
            return Err(bad);
        }
        if id != oid.as_slice() {
            continue;
        }
        if found.is_some() {
            return Err(RoleError::Duplicate);
        }
        let (mut tag, mut value, mut rest) = der_next(fields).ok_or(bad.clone())?;
        if tag == DER_BOOLEAN {
            fields = rest;
            (tag, value, rest) = der_next(fields).ok_or(bad.clone())?;
        }
        if tag != DER_OCTET_STRING || !rest.is_empty() {
            return Err(bad);
        }
        found = Some(Role::decode_value(value)?);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_text_and_value() {
        for role in [
            Role::Admin,
            Role::Tenant { tenant: "acme".into(), read_only: false },
            Role::Tenant { tenant: "acme_2".into(), read_only: true },
            Role::Node { id: 201, name: "eu-west-1".into(), region: "eu-west".into() },
        ] {
            assert_eq!(Role::parse(&role.text()), Ok(role.clone()));
            assert_eq!(Role::decode_value(&role.encode_value()), Ok(role));
        }
    }

    #[test]
    fn the_value_is_a_versioned_utf8_string() {
        assert_eq!(Role::Admin.encode_value(), b"\x0c\x071:admin".to_vec());
        let utf8 = |s: &str| [vec![0x0c, s.len() as u8], s.as_bytes().to_vec()].concat();
        assert_eq!(Role::decode_value(&utf8("2:admin")), Err(RoleError::UnknownVersion("2".into())));
        assert_eq!(Role::decode_value(&utf8("admin")), Err(RoleError::NoVersion("admin".into())));
        assert_eq!(Role::decode_value(&utf8("01:admin")), Err(RoleError::UnknownVersion("01".into())));
        assert_eq!(Role::decode_value(&utf8("1:root")), Err(RoleError::Unknown("root".into())));
        assert_eq!(Role::decode_value(b"\x13\x071:admin"), Err(RoleError::BadValue), "PrintableString");
        assert_eq!(Role::decode_value(b"\x0c\x071:admin\x00"), Err(RoleError::BadValue), "trailing byte");
        assert_eq!(Role::decode_value(b"\x0c\x081:admin"), Err(RoleError::BadValue), "short");
        assert_eq!(Role::decode_value(b"\x0c\x031:\xff"), Err(RoleError::BadValue), "not UTF-8");
    }

    #[test]
    fn role_text_is_strict() {
        for bad in [
            "",
            "Admin",
            "admin:",
            "tenant",
            "tenant:",
            "tenant:Acme",
            "tenant:-x",
            "tenant:a/b",
            "tenant:acme:write",
            "tenant:acme:read:x",
            "tenant:a:b",
            "node:1:eu-west-1",
            "node:+1:n:r",
            "node:01:n:r",
            "node:x:n:r",
            "node:99999999999999999999:n:r",
            "node:1::r",
        ] {
            assert!(Role::parse(bad).is_err(), "{bad:?} parsed");
        }
        let long = format!("tenant:{}", "a".repeat(64));
        assert!(Role::parse(&long).is_err());
    }

    #[test]
    fn the_oid_encodes_as_der() {
        // 2.25 -> 105; then base-128 groups, high bit on all but the last.
        let der = role_oid_der();
        assert_eq!(der[0], 105);
        assert_eq!(*der.last().expect("arcs"), 1);
        assert!(der[1..der.len() - 1].iter().rev().skip(1).all(|b| b & 0x80 != 0));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(role_from_cert_der(&[]), Err(RoleError::BadCertificate));
        assert_eq!(role_from_cert_der(&[0x30, 0x00]), Err(RoleError::BadCertificate));
        assert_eq!(role_from_cert_der(&[0x30, 0x02, 0x30, 0x00]), Ok(None));
        assert_eq!(role_from_cert_der(&[0x30, 0x04, 0x30, 0x02, 0xa3, 0x00]), Err(RoleError::BadCertificate));
    }
}
