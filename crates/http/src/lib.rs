//! One HTTP/1.1 request at a time, over TCP or TLS: all pgherd needs of an
//! HTTP client (notifications' `POST`s, a cluster manager's REST API).
//! hyper's client connection does the protocol; connecting, TLS and the
//! URL are done here, so no general-purpose client (and no second TLS
//! stack) is pulled in.
#![forbid(unsafe_code)]

use bytes::Bytes;

use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
pub use tokio_rustls::TlsConnector;

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    /// Host name or IP address, without an IPv6 address's brackets.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the URL wrote it, for the `Host` header.
    authority: String,
    /// Path and query.
    path: String,
}

impl Endpoint {
    /// Parses an `http://` or `https://` URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
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
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.host.contains(':') {
            true => format!("{scheme}://[{}]:{}", self.host, self.port),
            false => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
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
    #[error("reading the answer: {0}")]
    Body(String),
}

/// What an endpoint answered: its status, headers and body (up to the
/// limit the request set).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A `POST` of `json` to `to`. `tls` is required for `https://` endpoints;
/// the answer's body is read up to `body_limit` bytes.
pub async fn post_json(
    to: &Endpoint,
    json: Bytes,
    tls: Option<&TlsConnector>,
    body_limit: usize,
) -> Result<Reply, HttpError> {
    let request = Request::post(to.path.as_str())
        .header(HOST, to.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("pgherd/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(json))?;
    send(to, request, tls, body_limit).await
}

/// A `GET` of `to`, as [`post_json`].
pub async fn get(
    to: &Endpoint,
    tls: Option<&TlsConnector>,
    body_limit: usize,
) -> Result<Reply, HttpError> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(to.path.as_str())
        .header(HOST, to.authority.as_str())
        .header(USER_AGENT, concat!("pgherd/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::new()))?;
    send(to, request, tls, body_limit).await
}

async fn send(
    to: &Endpoint,
    request: Request<Full<Bytes>>,
    tls: Option<&TlsConnector>,
    body_limit: usize,
) -> Result<Reply, HttpError> {
    let tcp = TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(HttpError::Connect)?;
    let _ = tcp.set_nodelay(true);
    match (to.https, tls) {
        (true, Some(tls)) => {
            let name = ServerName::try_from(to.host.clone())
                .map_err(|_| HttpError::ServerName(to.host.clone()))?;
            let stream = tls.connect(name, tcp).await.map_err(HttpError::Tls)?;
            exchange(stream, request, body_limit).await
        }
        (true, None) => Err(HttpError::Tls(std::io::Error::other(
            "no TLS configuration for an https:// URL",
        ))),
        (false, _) => exchange(tcp, request, body_limit).await,
    }
}

async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    body_limit: usize,
) -> Result<Reply, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven while the request is sent and the answer
    // read; it ends when the sender is dropped, so it never outlives this
    // call by more than its own shutdown.
    let driver = tokio::spawn(connection);
    let reply = async {
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, body_limit)
            .collect()
            .await
            .map_err(|e| HttpError::Body(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    drop(sender);
    driver.abort();
    reply
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
        let answer = post_json(&to, Bytes::from_static(b"{\"text\":\"hi\"}"), None, 4096)
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
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
        let err = post_json(&to, Bytes::new(), None, 4096).await.unwrap_err();
        assert!(matches!(err, HttpError::Connect(_)), "{err}");
    }

    #[tokio::test]
    async fn https_checks_the_certificate_against_the_ca_file_and_the_host() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let pki = pgherd_tls::test_pki::TestPki::new();
        let connector = pgherd_tls::https_connector(&pki.ca_cert).unwrap();
        let cases = [
            (&pki.server_cert, &pki.server_key, true),
            // Signed by the trusted CA, but for another host name.
            (&pki.wrong_host_cert, &pki.wrong_host_key, false),
        ];
        for (cert, key, valid) in cases {
            let acceptor = pgherd_tls::test_pki::acceptor(cert, key);
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
            let sent = post_json(&to, Bytes::from_static(b"{}"), Some(&connector), 4096).await;
            if valid {
                assert_eq!(sent.unwrap().status, StatusCode::NO_CONTENT);
            } else {
                let err = sent.unwrap_err();
                assert!(matches!(err, HttpError::Tls(_)), "{err}");
            }
        }
    }
}
