//! A throwaway certificate authority for tests, made at run time: a CA,
//! a server certificate for `localhost` and `127.0.0.1`, a client
//! certificate, and a second, untrusted CA to sign impostors with. No key
//! or certificate is checked in.
//!
//! Only built for tests (this crate's, and `pgherd-testkit` through the
//! `test-pki` feature).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files of a test PKI, in a directory removed on drop.
#[derive(Debug)]
pub struct TestPki {
    _dir: tempfile::TempDir,
    /// The trusted CA's certificate.
    pub ca_cert: PathBuf,
    /// For `localhost` and `127.0.0.1`, signed by the CA.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// For the host name `elsewhere.invalid` only, signed by the CA: a
    /// valid certificate for the wrong host.
    pub wrong_host_cert: PathBuf,
    pub wrong_host_key: PathBuf,
    /// A client certificate (CN `app`), signed by the CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// For `localhost` and `127.0.0.1`, signed by another CA nobody trusts.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
    pub rogue_ca_cert: PathBuf,
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

fn leaf(
    ca: &Ca,
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `contents` readable by the owner only: PostgreSQL refuses a key
/// file others can read.
fn write_private(path: &Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(contents.as_bytes()).unwrap();
}

/// A TLS acceptor presenting `cert` (a PEM chain) with `key`, for a test's
/// own server (an https endpoint, say).
pub fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let trusted = ca("pgherd test CA");
        let rogue = ca("rogue CA");
        let local = ["localhost", "127.0.0.1"];
        let server = ExtendedKeyUsagePurpose::ServerAuth;

        let pki = TestPki {
            ca_cert: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            wrong_host_cert: path("wrong-host.crt"),
            wrong_host_key: path("wrong-host.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
            rogue_cert: path("rogue.crt"),
            rogue_key: path("rogue.key"),
            rogue_ca_cert: path("rogue-ca.crt"),
            _dir: dir,
        };
        let write_pair = |cert: &Path, key: &Path, (c, k): (String, String)| {
            std::fs::write(cert, c).unwrap();
            write_private(key, &k);
        };
        std::fs::write(&pki.ca_cert, trusted.cert.pem()).unwrap();
        std::fs::write(&pki.rogue_ca_cert, rogue.cert.pem()).unwrap();
        write_pair(
            &pki.server_cert,
            &pki.server_key,
            leaf(&trusted, &local, "localhost", server.clone()),
        );
        write_pair(
            &pki.wrong_host_cert,
            &pki.wrong_host_key,
            leaf(
                &trusted,
                &["elsewhere.invalid"],
                "elsewhere.invalid",
                server.clone(),
            ),
        );
        write_pair(
            &pki.client_cert,
            &pki.client_key,
            leaf(&trusted, &[], "app", ExtendedKeyUsagePurpose::ClientAuth),
        );
        write_pair(
            &pki.rogue_cert,
            &pki.rogue_key,
            leaf(&rogue, &local, "localhost", server),
        );
        pki
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
