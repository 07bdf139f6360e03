//! TLS towards PostgreSQL: pgherd is the TLS client (`server_tls_*`).
//!
//! The modes are libpq's and pgbouncer's: `prefer` asks for TLS and goes
//! on in plain text if the server has none; `require` insists but trusts
//! any certificate; `verify-ca` checks the certificate chains to
//! `server_tls_ca_file`; `verify-full` also checks it names the node's
//! `host`. `allow` starts in plain text and uses TLS only when the server
//! refuses the plain login (the session code retries; see
//! [`ServerTls::retries_with_tls`]).
//!
//! The same settings serve the health probes and `auth_query`, which use
//! tokio-postgres: [`PostgresTls`] plugs this configuration into it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pgherd_config::{SslMode, Tls};
use pgherd_wire::startup::{ENCRYPTION_ACCEPTED, ENCRYPTION_REFUSED, SSL_REQUEST};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{files, Stream, TlsError};

/// The server side's TLS, ready to connect.
#[derive(Clone)]
pub struct ServerTls {
    mode: SslMode,
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn new(settings: &Tls) -> Result<ServerTls, TlsError> {
        if settings.sslmode == SslMode::Disable {
            return Ok(ServerTls {
                mode: SslMode::Disable,
                connector: None,
            });
        }
        let provider = crate::provider();
        let verifier: Arc<dyn ServerCertVerifier> = match (&settings.ca_file, settings.sslmode) {
            (Some(ca), mode) if mode.verifies() => {
                let roots = Arc::new(files::roots(ca)?);
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                        .build()
                        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(Relaxed {
                        chain: Some(webpki),
                        provider: Arc::clone(&provider),
                    })
                }
            }
            _ => Arc::new(Relaxed {
                chain: None,
                provider: Arc::clone(&provider),
            }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&crate::versions(settings.protocols))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(files::certificates(cert)?, files::private_key(key)?)?,
            _ => builder.with_no_client_auth(),
        };
        Ok(ServerTls {
            mode: settings.sslmode,
            connector: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// `allow`: a login the server refused in plain text is tried again
    /// with TLS.
    pub fn retries_with_tls(&self) -> bool {
        self.mode == SslMode::Allow
    }

    /// Sets up a new server connection: plain for `disable` and (at first)
    /// `allow`; otherwise asks for TLS and does the handshake. `insist`:
    /// TLS even when the mode would go on without it (`allow`'s retry).
    pub async fn start(&self, mut tcp: TcpStream, host: &str, insist: bool) -> io::Result<Stream> {
        let Some(connector) = &self.connector else {
            return Ok(Stream::Plain(tcp));
        };
        if self.mode == SslMode::Allow && !insist {
            return Ok(Stream::Plain(tcp));
        }
        tokio::io::AsyncWriteExt::write_all(&mut tcp, &SSL_REQUEST).await?;
        // Exactly one byte: anything after an 'S' must be TLS, read by
        // rustls, never taken as plain text (CVE-2021-23222).
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            ENCRYPTION_ACCEPTED => {}
            ENCRYPTION_REFUSED if self.mode == SslMode::Prefer => return Ok(Stream::Plain(tcp)),
            ENCRYPTION_REFUSED => {
                return Err(io::Error::other(format!(
                    "the server does not accept TLS (server_tls_sslmode = {})",
                    self.mode.name()
                )))
            }
            other => {
                return Err(io::Error::other(format!(
                    "unexpected answer {other:#04x} to SSLRequest"
                )))
            }
        }
        let name = server_name(host)?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
        Ok(Stream::Connected(Box::new(tls)))
    }

    /// The same settings for a tokio-postgres connection (probes,
    /// `auth_query`).
    pub fn for_postgres(&self) -> PostgresTls {
        PostgresTls {
            connector: self.connector.clone(),
        }
    }

    /// The `sslmode` to give tokio-postgres alongside [`Self::for_postgres`].
    /// tokio-postgres knows disable, prefer and require; certificate checks
    /// are the connector's. `allow` asks (as `prefer`): a probe has no
    /// plain login to fall back from.
    pub fn postgres_ssl_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self.mode {
            SslMode::Disable => Pg::Disable,
            SslMode::Allow | SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name or IP address TLS can verify"),
        )
    })
}

/// The modes that check less than rustls's own verifier: `verify-ca`
/// (`chain`: the chain must lead to the CA, the name may be anything) and
/// `prefer`/`require` (no `chain`: encryption without authentication of
/// the server, libpq's meaning). The handshake's signatures are checked
/// either way.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name: a name error means the
        // chain was good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// pgherd's server-side TLS for tokio-postgres connections.
#[derive(Clone)]
pub struct PostgresTls {
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTls")
            .field("enabled", &self.connector.is_some())
            .finish()
    }
}

/// What [`PostgresTls`] makes for one host.
pub struct PostgresTlsConnect {
    connector: Option<TlsConnector>,
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for PostgresTlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTlsConnect")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A tokio-postgres connection's TLS stream.
#[derive(Debug)]
pub struct PostgresTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<PostgresTlsConnect> {
        // Made for every connection, TLS or not: a bad name only matters
        // when TLS is used.
        Ok(PostgresTlsConnect {
            connector: self.connector.clone(),
            name: server_name(domain).ok(),
        })
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for PostgresTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PostgresTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let (Some(connector), Some(name)) = (self.connector, self.name) else {
                return Err(io::Error::other("TLS is not configured for this host"));
            };
            let tls = connector.connect(name, stream).await?;
            Ok(PostgresTlsStream(tls))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PostgresTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A connector for `https://` URLs (notifications): the certificates in
/// `ca_file` (PEM, the system's bundle by default) as trust anchors, full
/// verification of the URL's host name, TLS 1.2 and 1.3.
pub fn https_connector(ca_file: &std::path::Path) -> Result<TlsConnector, TlsError> {
    let roots = files::roots(ca_file)?;
    let config = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::TestPki;
    use crate::ClientTls;
    use pgherd_config::TlsProtocols;

    const BOTH: TlsProtocols = TlsProtocols {
        tls12: true,
        tls13: true,
    };

    fn side(mode: SslMode, ca: Option<&std::path::Path>) -> Tls {
        Tls {
            sslmode: mode,
            key_file: None,
            cert_file: None,
            ca_file: ca.map(|p| p.to_path_buf()),
            protocols: BOTH,
        }
    }

    /// A TLS server on loopback that answers one SSLRequest with `S` and
    /// shakes hands with `cert`/`key`; returns its port.
    async fn tls_server(cert: &std::path::Path, key: &std::path::Path) -> u16 {
        let tls = ClientTls::new(&Tls {
            sslmode: SslMode::Require,
            key_file: Some(key.to_path_buf()),
            cert_file: Some(cert.to_path_buf()),
            ca_file: None,
            protocols: BOTH,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 8];
                    tcp.read_exact(&mut req).await.unwrap();
                    assert_eq!(req, SSL_REQUEST);
                    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[ENCRYPTION_ACCEPTED])
                        .await
                        .unwrap();
                    if let Ok(mut s) = tls.accept(tcp).await {
                        let _ = s.send(b"hello").await;
                    }
                });
            }
        });
        port
    }

    async fn try_connect(tls: &ServerTls, port: u16, host: &str) -> io::Result<Vec<u8>> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut s = tls.start(tcp, host, false).await?;
        let mut got = vec![0u8; 5];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn each_mode_checks_what_it_promises() {
        let pki = TestPki::new();
        let good = tls_server(&pki.server_cert, &pki.server_key).await;
        let wrong_host = tls_server(&pki.wrong_host_cert, &pki.wrong_host_key).await;
        let rogue = tls_server(&pki.rogue_cert, &pki.rogue_key).await;
        let ca = Some(pki.ca_cert.as_path());
        let require = ServerTls::new(&side(SslMode::Require, None)).unwrap();
        let verify_ca = ServerTls::new(&side(SslMode::VerifyCa, ca)).unwrap();
        let verify_full = ServerTls::new(&side(SslMode::VerifyFull, ca)).unwrap();

        for port in [good, wrong_host, rogue] {
            assert_eq!(
                try_connect(&require, port, "127.0.0.1").await.unwrap(),
                b"hello"
            );
        }
        assert!(try_connect(&verify_ca, good, "127.0.0.1").await.is_ok());
        assert!(try_connect(&verify_ca, wrong_host, "127.0.0.1")
            .await
            .is_ok());
        let e = try_connect(&verify_ca, rogue, "127.0.0.1")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("TLS handshake"), "{e}");
        assert!(try_connect(&verify_full, good, "127.0.0.1").await.is_ok());
        assert!(try_connect(&verify_full, good, "localhost").await.is_ok());
        assert!(try_connect(&verify_full, wrong_host, "127.0.0.1")
            .await
            .is_err());
        assert!(try_connect(&verify_full, rogue, "localhost").await.is_err());
    }

    /// A server that answers every SSLRequest with `N`.
    async fn plain_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut req = [0u8; 8];
                if tcp.read_exact(&mut req).await.is_ok() {
                    let _ =
                        tokio::io::AsyncWriteExt::write_all(&mut tcp, &[ENCRYPTION_REFUSED]).await;
                }
                tokio::spawn(async move {
                    let mut rest = Vec::new();
                    let _ = tcp.read_to_end(&mut rest).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn prefer_goes_on_in_plain_text_require_does_not() {
        let port = plain_server().await;
        let connect = |mode| async move {
            let tls = ServerTls::new(&side(mode, None)).unwrap();
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            tls.start(tcp, "127.0.0.1", false).await
        };
        assert!(!connect(SslMode::Prefer).await.unwrap().is_tls());
        let e = connect(SslMode::Require).await.unwrap_err();
        assert!(e.to_string().contains("does not accept TLS"), "{e}");
        // allow and disable do not even ask.
        let allow = ServerTls::new(&side(SslMode::Allow, None)).unwrap();
        assert!(allow.retries_with_tls());
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(!allow.start(tcp, "h", false).await.unwrap().is_tls());
    }
}
