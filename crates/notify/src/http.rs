//! One HTTP/1.1 `POST` of a JSON body, over TCP or TLS: all a notifier
//! needs of an HTTP client. hyper's client connection does the protocol;
//! connecting, TLS and the URL are done here, so no general-purpose client
//! (and no second TLS stack) is pulled in.

use bytes::Bytes;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    /// Host name or IP address, without an IPv6 address's brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host[:port]` as the URL wrote it, for the `Host` header.
    authority: String,
    /// Path and query.
    path: String,
}

impl Endpoint {
    /// Parses an `http://` or `https://` URL; the error says what is wrong.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http:// or https:// URL".into()),
        };
        let authority = uri.authority().ok_or("no host")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Endpoint {
            https,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

impl Endpoint {
    /// `scheme://host:port`: the URL without its path (paths often hold
    /// secrets), for logs and metrics.
    pub(crate) fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.host.contains(':') {
            true => format!("{scheme}://[{}]:{}", self.host, self.port),
            false => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// Why a `POST` got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("{0} is not a valid TLS server name")]
    ServerName(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// Sends `body` (JSON) to `to` and returns the answer. `tls` is required
/// for `https://` endpoints.
pub(crate) async fn post(
    to: &Endpoint,
    body: Bytes,
    tls: Option<&TlsConnector>,
) -> Result<Answer, PostError> {
    let tcp = TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(PostError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let request = Request::post(to.path.as_str())
        .header(HOST, to.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("pgherd/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(body))?;
    match (to.https, tls) {
        (true, Some(tls)) => {
            let name = ServerName::try_from(to.host.clone())
                .map_err(|_| PostError::ServerName(to.host.clone()))?;
            let stream = tls.connect(name, tcp).await.map_err(PostError::Tls)?;
            exchange(stream, request).await
        }
        (true, None) => Err(PostError::Tls(std::io::Error::other(
            "no TLS configuration for an https:// URL",
        ))),
        (false, _) => exchange(tcp, request).await,
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Answer, PostError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven while the request is sent; it ends when the
    // sender is dropped, so it never outlives this call by more than its
    // own shutdown.
    let driver = tokio::spawn(connection);
    let answer = match sender.send_request(request).await {
        Ok(response) => Ok(Answer::read(response).await),
        Err(e) => Err(e),
    };
    drop(sender);
    driver.abort();
    Ok(answer?)
}

/// What an endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// With 429: how long the endpoint asks to wait, from a `Retry-After`
    /// header (seconds) or, as Telegram's Bot API says it, the body's
    /// `parameters.retry_after`.
    pub(crate) retry_after: Option<Duration>,
}

impl Answer {
    async fn read(response: hyper::Response<Incoming>) -> Answer {
        let status = response.status();
        if status != StatusCode::TOO_MANY_REQUESTS {
            return Answer {
                status,
                retry_after: None,
            };
        }
        let header = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let seconds = match header {
            Some(seconds) => Some(seconds),
            None => Limited::new(response.into_body(), 4096)
                .collect()
                .await
                .ok()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body.to_bytes()).ok())
                .and_then(|json| json["parameters"]["retry_after"].as_u64()),
        };
        Answer {
            status,
            retry_after: seconds.map(Duration::from_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_endpoints() {
        let e = Endpoint::parse("https://hooks.example.com/services/T0/B0?x=1").unwrap();
        assert!(e.https);
        assert_eq!(e.host, "hooks.example.com");
        assert_eq!(e.port, 443);
        assert_eq!(e.authority, "hooks.example.com");
        assert_eq!(e.path, "/services/T0/B0?x=1");

        let e = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        assert!(!e.https);
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 9000));
        assert_eq!(e.path, "/");

        let e = Endpoint::parse("http://[::1]:8080/hook").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8080));
        assert_eq!(e.authority, "[::1]:8080");
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(Endpoint::parse("ftp://example.com/")
            .unwrap_err()
            .contains("http://"));
        assert!(Endpoint::parse("/just/a/path").is_err());
        assert!(Endpoint::parse("http:// spaces").is_err());
    }

    #[tokio::test]
    async fn a_post_reports_the_status_and_a_refused_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the 13-byte body.
            while !String::from_utf8_lossy(&got).contains("{\"text\":\"hi\"}") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let to = Endpoint::parse(&format!("http://127.0.0.1:{port}/hook?k=v")).unwrap();
        let answer = post(&to, Bytes::from_static(b"{\"text\":\"hi\"}"), None)
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.retry_after, None);
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("post /hook?k=v http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/json\r\n"),
            "{request}"
        );

        // Nothing listens there any more.
        let err = post(&to, Bytes::new(), None).await.unwrap_err();
        assert!(matches!(err, PostError::Connect(_)), "{err}");
    }

    #[tokio::test]
    async fn https_checks_the_certificate_against_the_ca_file_and_the_host() {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let pki = pgherd_tls::test_pki::TestPki::new();
        let connector = pgherd_tls::https_connector(&pki.ca_cert).unwrap();
        let cases = [
            (&pki.server_cert, &pki.server_key, true),
            // Signed by the trusted CA, but for another host name.
            (&pki.wrong_host_cert, &pki.wrong_host_key, false),
        ];
        for (cert, key, valid) in cases {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                let _ = tls.flush().await;
            });
            let to = Endpoint::parse(&format!("https://127.0.0.1:{port}/hook")).unwrap();
            let sent = post(&to, Bytes::from_static(b"{}"), Some(&connector)).await;
            if valid {
                assert_eq!(sent.unwrap().status, StatusCode::NO_CONTENT);
            } else {
                let err = sent.unwrap_err();
                assert!(matches!(err, PostError::Tls(_)), "{err}");
            }
        }
    }

    #[tokio::test]
    async fn a_429_says_how_long_to_wait_in_a_header_or_telegrams_body() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let telegram = br#"{"ok":false,"error_code":429,"description":"retry after 3","parameters":{"retry_after":3}}"#;
        let answers = [
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n".to_vec(),
            [
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    telegram.len()
                )
                .as_bytes(),
                telegram,
            ]
            .concat(),
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ];
        let expected = [Some(7), Some(3), None];
        for (answer, wait) in answers.into_iter().zip(expected) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                s.write_all(&answer).await.unwrap();
            });
            let to = Endpoint::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
            let got = post(&to, Bytes::from_static(b"{}"), None).await.unwrap();
            assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(got.retry_after, wait.map(Duration::from_secs));
        }
    }
}
