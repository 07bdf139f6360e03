//! TCP options of the connections pgherd accepts and opens: `TCP_NODELAY`
//! (the relay batches by itself; Nagle would only add latency) and
//! pgbouncer's `tcp_keepalive`, `tcp_keepidle`, `tcp_keepintvl`,
//! `tcp_keepcnt` and `tcp_user_timeout`.
//!
//! They matter when a host dies without closing its connections (power
//! loss, a network partition): no FIN or RST ever arrives, and a session
//! waiting for its server would wait for as long as the kernel keeps the
//! connection: forever when it is idle, as long as it retransmits (up to
//! `tcp_retries2`) when data is in flight. Keepalive probes bound the
//! first, `TCP_USER_TIMEOUT` the second (`benches/dead-peer.sh` measures
//! both); the read that then fails ends the session as any lost server
//! connection does (08006), and the client can reconnect.

use pgherd_config::TcpOptions;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Applies `options` to `tcp`.
pub(crate) fn tune(tcp: &TcpStream, options: &TcpOptions) -> std::io::Result<()> {
    let socket = SockRef::from(tcp);
    socket.set_tcp_nodelay(true)?;
    if options.keepalive {
        let mut keepalive = TcpKeepalive::new();
        if let Some(idle) = options.keepidle {
            keepalive = keepalive.with_time(idle);
        }
        if let Some(interval) = options.keepintvl {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(count) = options.keepcnt {
            keepalive = keepalive.with_retries(count);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    if let Some(timeout) = options.user_timeout {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    #[tokio::test]
    async fn the_options_reach_the_socket() {
        let (tcp, _peer) = pair().await;
        let options = TcpOptions {
            keepalive: true,
            keepidle: Some(Duration::from_secs(30)),
            keepintvl: Some(Duration::from_secs(10)),
            keepcnt: Some(3),
            user_timeout: Some(Duration::from_millis(20_500)),
        };
        tune(&tcp, &options).unwrap();
        let s = SockRef::from(&tcp);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(20_500))
        );
    }

    #[tokio::test]
    async fn unset_options_keep_the_systems_values() {
        let (tcp, _peer) = pair().await;
        let before = SockRef::from(&tcp).tcp_keepalive_time().unwrap();
        let defaults = TcpOptions {
            keepalive: true,
            keepidle: None,
            keepintvl: None,
            keepcnt: None,
            user_timeout: None,
        };
        tune(&tcp, &defaults).unwrap();
        let s = SockRef::from(&tcp);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), before);
        assert_eq!(s.tcp_user_timeout().unwrap(), None);

        let (tcp, _peer) = pair().await;
        let off = TcpOptions {
            keepalive: false,
            ..defaults
        };
        tune(&tcp, &off).unwrap();
        assert!(!SockRef::from(&tcp).keepalive().unwrap());
    }
}
