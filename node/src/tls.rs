//! The rustls configurations of tetrad's mutual TLS, built from the cluster's certificates.
//!
//! The certificates themselves (the cluster CA, node and tool certificates, their PEM form, peer
//! names read from a certificate) are made in `tetrad-config` (`tetrad_config::certs`), which
//! tetradctl shares without compiling rustls or QUIC; this module re-exports them at their old
//! paths (`tetrad_node::tls::CaBundle`, ...). See that module for the identity rules.
//!
//! The configurations use the ring provider explicitly and never a process-wide default, and only
//! TLS 1.3, which QUIC requires and which every tetrad component speaks.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tetrad_config::certs::{certs_from_pem, key_from_pem};

pub use tetrad_config::certs::{
    cert_common_name, cert_dns_names, validate_node_name, CaBundle, NodeCert, TlsError, RESERVED_NAME,
};
pub use tetrad_config::role::{role_from_cert_der as cert_role, Role, RoleError};

/// ALPN protocol id of tetrad's node-to-node protocol. A caller that reuses these configurations
/// for another protocol (gRPC wants `h2`) replaces `alpn_protocols`.
pub const ALPN: &[u8] = b"tetrad/1";

/// A rustls server configuration presenting `cert_pem` and requiring every client to present a
/// certificate issued by a CA in `ca_pem` (which may hold several CAs while one is being replaced).
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, TlsError> {
    let side = "server";
    let provider = ring_provider();
    let roots = Arc::new(root_store(ca_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config { side, reason: e.to_string() })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config { side, reason: e.to_string() })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(cert_pem, "the node certificate")?, key_from_pem(key_pem)?)
        .map_err(|e| TlsError::Config { side, reason: format!("node certificate and key: {e}") })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A rustls client configuration presenting `cert_pem` and trusting only the CAs in `ca_pem`.
pub fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let side = "client";
    let mut config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config { side, reason: e.to_string() })?
        .with_root_certificates(root_store(ca_pem)?)
        .with_client_auth_cert(certs_from_pem(cert_pem, "the node certificate")?, key_from_pem(key_pem)?)
        .map_err(|e| TlsError::Config { side, reason: format!("node certificate and key: {e}") })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let what = "the CA certificate";
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem, what)? {
        roots.add(cert).map_err(|e| TlsError::BadCertificate { what, reason: e.to_string() })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, ServerName};

    /// Runs a TLS handshake between a client and a server in memory, returning the server
    /// connection (for its view of the client) or the first error either side raised.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
        server_name: &str,
    ) -> Result<(rustls::ClientConnection, rustls::ServerConnection), rustls::Error> {
        let name = ServerName::try_from(server_name.to_owned()).expect("test server name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        // A TLS 1.3 handshake with client auth takes two round trips; bound the loop well above it.
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).expect("write to a Vec");
            }
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                server.read_tls(&mut slice).expect("read from a slice");
            }
            server.process_new_packets()?;
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).expect("write to a Vec");
            }
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                client.read_tls(&mut slice).expect("read from a slice");
            }
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok((client, server));
            }
        }
        panic!("handshake did not finish");
    }

    fn configs(ca: &CaBundle, client: &NodeCert, server: &NodeCert) -> (rustls::ClientConfig, rustls::ServerConfig) {
        (
            client_config(&ca.cert_pem, &client.cert_pem, &client.key_pem).expect("client config"),
            server_config(&ca.cert_pem, &server.cert_pem, &server.key_pem).expect("server config"),
        )
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        tetrad_config::certs::single_cert(pem, "test certificate").expect("one certificate")
    }

    #[test]
    fn mutual_tls_between_two_nodes_of_one_ca_succeeds_and_names_the_client() {
        let ca = CaBundle::generate("prod").expect("CA");
        let eu = ca.issue("eu-west-2").expect("eu cert");
        let us = ca.issue("us-east-1").expect("us cert");
        let (client, server) = configs(&ca, &us, &eu);
        let (client, server) = handshake(client, server, "eu-west-2").expect("handshake");
        assert_eq!(client.alpn_protocol(), Some(ALPN));
        let presented = server.peer_certificates().expect("client presented a certificate");
        assert_eq!(presented.len(), 1);
        assert_eq!(cert_dns_names(&presented[0]).expect("names"), vec!["us-east-1", "localhost"]);
    }

    #[test]
    fn issued_certificate_is_valid_for_loopback_addresses() {
        let ca = CaBundle::generate("prod").expect("CA");
        let node = ca.issue("eu-west-2").expect("cert");
        for server_name in ["localhost", "127.0.0.1", "::1"] {
            let (client, server) = configs(&ca, &node, &node);
            handshake(client, server, server_name).unwrap_or_else(|e| panic!("{server_name}: {e}"));
        }
    }

    #[test]
    fn client_rejects_a_server_certificate_for_another_name() {
        let ca = CaBundle::generate("prod").expect("CA");
        let eu = ca.issue("eu-west-2").expect("eu cert");
        let us = ca.issue("us-east-1").expect("us cert");
        let (client, server) = configs(&ca, &us, &eu);
        let err = handshake(client, server, "ap-south-1").expect_err("wrong name must fail");
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn server_rejects_a_client_certificate_from_another_ca() {
        let ca = CaBundle::generate("prod").expect("CA");
        let rogue_ca = CaBundle::generate("prod").expect("rogue CA with the same name");
        let eu = ca.issue("eu-west-2").expect("eu cert");
        let rogue = rogue_ca.issue("us-east-1").expect("rogue cert");
        // The client trusts the real CA, so only the server's check stands between the rogue
        // certificate and the cluster.
        let client = client_config(&ca.cert_pem, &rogue.cert_pem, &rogue.key_pem).expect("client config");
        let server = server_config(&ca.cert_pem, &eu.cert_pem, &eu.key_pem).expect("server config");
        let err = handshake(client, server, "eu-west-2").expect_err("rogue client must fail");
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn client_rejects_a_server_certificate_from_another_ca() {
        let ca = CaBundle::generate("prod").expect("CA");
        let rogue_ca = CaBundle::generate("prod").expect("rogue CA");
        let us = ca.issue("us-east-1").expect("us cert");
        let rogue = rogue_ca.issue("eu-west-2").expect("rogue cert");
        let client = client_config(&ca.cert_pem, &us.cert_pem, &us.key_pem).expect("client config");
        let server = server_config(&rogue_ca.cert_pem, &rogue.cert_pem, &rogue.key_pem).expect("server config");
        let err = handshake(client, server, "eu-west-2").expect_err("rogue server must fail");
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn server_requires_a_client_certificate() {
        let ca = CaBundle::generate("prod").expect("CA");
        let eu = ca.issue("eu-west-2").expect("eu cert");
        let mut roots = RootCertStore::empty();
        roots.add(der(&ca.cert_pem)).expect("root");
        let mut anonymous = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN.to_vec()];
        let server = server_config(&ca.cert_pem, &eu.cert_pem, &eu.key_pem).expect("server config");
        let err = handshake(anonymous, server, "eu-west-2").expect_err("anonymous client must fail");
        assert!(matches!(err, rustls::Error::NoCertificatesPresented), "{err:?}");
    }

    #[test]
    fn a_ca_reloaded_from_pem_issues_certificates_its_original_verifies() {
        let ca = CaBundle::generate("prod").expect("CA");
        let reloaded = CaBundle { cert_pem: ca.cert_pem.clone(), key_pem: ca.key_pem.clone() };
        let first = ca.issue("eu-west-2").expect("first");
        let later = reloaded.issue("us-east-1").expect("later");
        let (client, server) = configs(&ca, &later, &first);
        handshake(client, server, "eu-west-2").expect("handshake");
    }

    #[test]
    fn malformed_pem_gets_an_error_that_names_the_input() {
        let ca = CaBundle::generate("prod").expect("CA");
        let node = ca.issue("eu-west-2").expect("cert");

        let err = server_config(&ca.cert_pem, "not a certificate", &node.key_pem).expect_err("no cert");
        assert_eq!(err.to_string(), "the node certificate contains no PEM certificate");

        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = client_config(broken, &node.cert_pem, &node.key_pem).expect_err("bad base64");
        assert!(err.to_string().starts_with("the CA certificate is not valid PEM"), "{err}");

        let err = client_config(&ca.cert_pem, &node.cert_pem, &node.cert_pem).expect_err("no key");
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");

        let other = ca.issue("us-east-1").expect("other cert");
        let err = server_config(&ca.cert_pem, &node.cert_pem, &other.key_pem).expect_err("key of another cert");
        assert!(matches!(err, TlsError::Config { .. }), "{err}");
    }
}
