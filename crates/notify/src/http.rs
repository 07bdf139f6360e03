//! What a notification's `POST` came to: the endpoint's status and, on
//! 429, how long it asks to wait.

use bytes::Bytes;
use std::time::Duration;

use hyper::header::RETRY_AFTER;
use hyper::StatusCode;
use pgherd_http::{Endpoint, HttpError};
use tokio_rustls::TlsConnector;

/// Bytes of an answer read: enough for Telegram's error bodies.
const BODY_LIMIT: usize = 4096;

/// Sends `body` (JSON) to `to` and returns the answer. `tls` is required
/// for `https://` endpoints.
pub(crate) async fn post(
    to: &Endpoint,
    body: Bytes,
    tls: Option<&TlsConnector>,
) -> Result<Answer, HttpError> {
    let reply = pgherd_http::post_json(to, body, tls, BODY_LIMIT).await?;
    Ok(Answer::read(&reply))
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
    fn read(reply: &pgherd_http::Reply) -> Answer {
        let status = reply.status;
        if status != StatusCode::TOO_MANY_REQUESTS {
            return Answer {
                status,
                retry_after: None,
            };
        }
        let header = reply
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let seconds = header.or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|json| json["parameters"]["retry_after"].as_u64())
        });
        Answer {
            status,
            retry_after: seconds.map(Duration::from_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
