//! Where a client connected from: a TCP address, or a process on one of
//! pgherd's Unix-domain sockets.
//!
//! pgbouncer shows a Unix-socket client as address `unix` with the port of
//! the socket it came in on, and logs it as `unix(PID):PORT`; pgherd does
//! the same. The peer's uid is kept for `auth_type = "peer"`.

use std::fmt;
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddr {
    Tcp(SocketAddr),
    /// `port`: the listener's port, in the socket's name (`.s.PGSQL.PORT`).
    /// `pid` and `uid`: the peer process, as the kernel reports it
    /// (`SO_PEERCRED`), when it does.
    Unix {
        port: u16,
        pid: Option<i32>,
        uid: Option<u32>,
    },
}

impl ClientAddr {
    /// The client's IP address, or `unix` (the console's `addr` column).
    pub fn host(&self) -> String {
        match self {
            ClientAddr::Tcp(a) => a.ip().to_string(),
            ClientAddr::Unix { .. } => "unix".into(),
        }
    }

    /// The client's TCP port, or the Unix socket's (the listener's) port.
    pub fn port(&self) -> u16 {
        match self {
            ClientAddr::Tcp(a) => a.port(),
            ClientAddr::Unix { port, .. } => *port,
        }
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, ClientAddr::Unix { .. })
    }

    /// The operating system user of a Unix-socket client's process.
    pub(crate) fn unix_uid(&self) -> Option<u32> {
        match self {
            ClientAddr::Unix { uid, .. } => *uid,
            ClientAddr::Tcp(_) => None,
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Tcp(a) => a.fmt(f),
            ClientAddr::Unix {
                port,
                pid: Some(pid),
                ..
            } => write!(f, "unix({pid}):{port}"),
            ClientAddr::Unix {
                port, pid: None, ..
            } => write!(f, "unix:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_pgbouncer_shows_them() {
        let tcp = ClientAddr::Tcp("10.0.0.5:51234".parse().unwrap());
        assert_eq!((tcp.host(), tcp.port()), ("10.0.0.5".into(), 51234));
        assert_eq!(tcp.to_string(), "10.0.0.5:51234");
        let unix = ClientAddr::Unix {
            port: 6432,
            pid: Some(4242),
            uid: Some(1000),
        };
        assert_eq!((unix.host(), unix.port()), ("unix".into(), 6432));
        assert_eq!(unix.to_string(), "unix(4242):6432");
        assert_eq!((unix.unix_uid(), tcp.unix_uid()), (Some(1000), None));
        let no_cred = ClientAddr::Unix {
            port: 5432,
            pid: None,
            uid: None,
        };
        assert_eq!(no_cred.to_string(), "unix:5432");
    }
}
