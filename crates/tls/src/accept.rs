//! TLS towards clients: pgherd is the TLS server (`client_tls_*`).
//!
//! pgbouncer's modes: `disable` answers an SSLRequest with "no"; `allow`
//! and `prefer` do TLS when the client asks; `require` refuses a client
//! that does not (the session code says so with a 28000 error);
//! `verify-ca` and `verify-full` also require a client certificate signed
//! by `client_tls_ca_file`. Without those two, a client certificate is not
//! asked for.

use std::sync::Arc;

use pgherd_config::{SslMode, Tls};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::{binding, files, Stream, TlsError};

/// The client side's TLS, ready to accept handshakes.
#[derive(Clone)]
pub struct ClientTls {
    mode: SslMode,
    acceptor: Option<TlsAcceptor>,
    /// SCRAM channel binding data for pgherd's certificate, when its
    /// signature algorithm defines some (see `binding`).
    channel_binding: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .field("enabled", &self.acceptor.is_some())
            .finish()
    }
}

impl ClientTls {
    pub fn new(settings: &Tls) -> Result<ClientTls, TlsError> {
        let (Some(key_file), Some(cert_file), true) = (
            &settings.key_file,
            &settings.cert_file,
            settings.sslmode != SslMode::Disable,
        ) else {
            return Ok(ClientTls {
                mode: SslMode::Disable,
                acceptor: None,
                channel_binding: None,
            });
        };
        let builder = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&crate::versions(settings.protocols))?;
        let builder = match (&settings.ca_file, settings.sslmode.verifies()) {
            (Some(ca), true) => {
                let roots = Arc::new(files::roots(ca)?);
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots, crate::provider())
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let chain = files::certificates(cert_file)?;
        let channel_binding = chain
            .first()
            .and_then(|leaf| binding::tls_server_end_point(leaf))
            .map(Arc::from);
        let config = builder.with_single_cert(chain, files::private_key(key_file)?)?;
        Ok(ClientTls {
            mode: settings.sslmode,
            acceptor: Some(TlsAcceptor::from(Arc::new(config))),
            channel_binding,
        })
    }

    /// SCRAM's `tls-server-end-point` data for connections this accepts:
    /// with it, `SCRAM-SHA-256-PLUS` is offered to TLS clients.
    pub fn channel_binding(&self) -> Option<Arc<[u8]>> {
        self.channel_binding.clone()
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// True when an SSLRequest is answered "yes".
    pub fn offered(&self) -> bool {
        self.acceptor.is_some()
    }

    /// True when a client must use TLS to log in.
    pub fn required(&self) -> bool {
        self.mode >= SslMode::Require
    }

    /// The handshake, after pgherd answered the client's SSLRequest with
    /// "yes". Fails when TLS is off (the caller should have said "no").
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        let Some(acceptor) = &self.acceptor else {
            return Err(std::io::Error::other("TLS is not configured"));
        };
        let tls = acceptor.accept(tcp).await?;
        Ok(Stream::Accepted(Box::new(tls)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::TestPki;

    fn settings(pki: &TestPki, mode: SslMode) -> Tls {
        Tls {
            sslmode: mode,
            key_file: Some(pki.server_key.clone()),
            cert_file: Some(pki.server_cert.clone()),
            ca_file: Some(pki.ca_cert.clone()),
            protocols: pgherd_config::TlsProtocols {
                tls12: true,
                tls13: true,
            },
        }
    }

    #[test]
    fn modes_decide_offer_and_requirement() {
        let pki = TestPki::new();
        let off = ClientTls::new(&settings(&pki, SslMode::Disable)).unwrap();
        assert!(!off.offered() && !off.required());
        let prefer = ClientTls::new(&settings(&pki, SslMode::Prefer)).unwrap();
        assert!(prefer.offered() && !prefer.required());
        let verify = ClientTls::new(&settings(&pki, SslMode::VerifyCa)).unwrap();
        assert!(verify.offered() && verify.required());
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let pki = TestPki::new();
        let mut s = settings(&pki, SslMode::Require);
        s.key_file = Some(pki.client_key.clone());
        let e = ClientTls::new(&s).unwrap_err().to_string();
        assert!(e.contains("TLS configuration"), "{e}");
    }
}
