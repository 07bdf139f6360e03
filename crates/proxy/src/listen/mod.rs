//! pgherd's listening sockets: TCP, and with `unix_socket_dir` a
//! Unix-domain socket beside each TCP listener.
//!
//! The Unix socket is named as PostgreSQL and pgbouncer name theirs,
//! `.s.PGSQL.PORT` after the TCP listener's port, so `psql -h DIR -p PORT`
//! and libpq's `host=/DIR` reach pgherd, with the same default target.
//! A socket file outlives a process that was killed; binding over one that
//! nobody answers on any more removes it first (pgbouncer's check: try to
//! connect), and one that another process still serves is left alone and
//! reported — unless `so_reuseport` says a new pgherd is taking over from
//! a running one: then the new file replaces the old one (the old process
//! keeps serving the clients it has, and gets no new ones). The file is
//! removed when its listener goes, if it is still this listener's.
//!
//! With `so_reuseport`, TCP listeners set `SO_REUSEPORT`, so a new pgherd
//! can listen on the same addresses while the old one drains (pgbouncer's
//! rolling restart): the kernel spreads new connections over both until
//! the old one stops listening.
//!
//! What may not live here: anything past `accept` (logins, sessions); this
//! room is the floor the others stand on and imports none of them.

pub(crate) mod addr;
pub(crate) mod sockets;

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pgherd_tls::Stream;
use tokio::net::{TcpListener, UnixListener};

use addr::ClientAddr;

#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

impl Listener {
    /// The next client, with where it came from.
    pub(crate) async fn accept(&self) -> io::Result<(Stream, ClientAddr)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((Stream::Plain(stream), ClientAddr::Tcp(peer)))
            }
            Listener::Unix(s) => {
                let (stream, _) = s.listener.accept().await?;
                let cred = stream.peer_cred().ok();
                let peer = ClientAddr::Unix {
                    port: s.port,
                    pid: cred.and_then(|c| c.pid()),
                    uid: cred.map(|c| c.uid()),
                };
                Ok((Stream::Unix(Box::new(stream)), peer))
            }
        }
    }
}

/// A TCP listener on `addr`, as tokio's `TcpListener::bind` makes it
/// (`SO_REUSEADDR`), with an accept queue of `backlog` connections
/// (`listen_backlog`; the kernel caps it at `net.core.somaxconn`), plus
/// `SO_REUSEPORT` with `reuse_port`.
pub fn bind_tcp(addr: SocketAddr, reuse_port: bool, backlog: u32) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog_arg(backlog))?;
    TcpListener::from_std(socket.into())
}

/// `listen(2)`'s argument: the config allows 1 to 65,535.
fn backlog_arg(backlog: u32) -> i32 {
    i32::try_from(backlog).unwrap_or(i32::MAX)
}

/// A bound Unix-domain socket; its file is removed when it is dropped,
/// unless another process has replaced it since.
#[derive(Debug)]
pub(crate) struct UnixSocket {
    listener: UnixListener,
    pub(crate) path: PathBuf,
    /// The TCP listener's port, in the file's name.
    port: u16,
    /// The file's device and inode when it was made.
    file: (u64, u64),
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `DIR/.s.PGSQL.PORT` with file mode `mode` and group `group` and an
/// accept queue of `backlog`; `take_over`: replace a file another process
/// listens on (`so_reuseport`). Errors name the file.
pub(crate) fn bind_unix(
    dir: &Path,
    port: u16,
    (mode, group): (u32, Option<&str>),
    take_over: bool,
    backlog: u32,
) -> io::Result<UnixSocket> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let live = std::os::unix::net::UnixStream::connect(&path).is_ok();
            if live && !take_over {
                return Err(named(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on this socket (set so_reuseport to take over \
                     from it)",
                )));
            }
            if live {
                tracing::info!(
                    "{}: taking over from the process listening on it",
                    path.display()
                );
            }
            // Left behind by a process that is gone, or handed over.
            std::fs::remove_file(&path).map_err(named)?;
            UnixListener::bind(&path).map_err(named)?
        }
        Err(e) => return Err(named(e)),
    };
    let meta = std::fs::symlink_metadata(&path).map_err(named)?;
    // From here on a failure drops the socket, and so removes the file.
    let socket = UnixSocket {
        listener,
        path: path.clone(),
        port,
        file: (meta.dev(), meta.ino()),
    };
    // Bound with the standard library's queue length; listening again
    // sets ours.
    socket2::SockRef::from(&socket.listener)
        .listen(backlog_arg(backlog))
        .map_err(named)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(named)?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)
            .map_err(io::Error::from)
            .map_err(named)?
            .ok_or_else(|| {
                named(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("unix_socket_group: no group {group:?}"),
                ))
            })?
            .gid;
        nix::unistd::chown(&path, None, Some(gid))
            .map_err(io::Error::from)
            .map_err(named)?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn binds_with_mode_replaces_a_stale_file_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        // A socket file nobody listens on (its process died).
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join(".s.PGSQL.7001"));
        drop(stale.unwrap());
        let socket = bind_unix(dir.path(), 7001, (0o770, None), false, 64).unwrap();
        let meta = std::fs::metadata(&socket.path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o770);

        // Taken by a live listener: refused, and its file left alone.
        let err = bind_unix(dir.path(), 7001, (0o777, None), false, 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(".s.PGSQL.7001"), "{err}");
        assert!(socket.path.exists());

        let listener = Listener::Unix(socket);
        let path = dir.path().join(".s.PGSQL.7001");
        let client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        assert!(matches!(stream, Stream::Unix(_)));
        assert_eq!(peer.port(), 7001);
        assert_eq!(peer.unix_uid(), Some(nix::unistd::getuid().as_raw()));
        drop((client, stream));

        drop(listener);
        assert!(
            !path.exists(),
            "the socket file is removed with its listener"
        );
    }

    #[tokio::test]
    async fn an_unknown_group_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let group = Some("no-such-group-pgherd");
        let err = bind_unix(dir.path(), 7002, (0o777, group), false, 64).unwrap_err();
        assert!(err.to_string().contains("no-such-group-pgherd"), "{err}");
        assert!(!dir.path().join(".s.PGSQL.7002").exists());
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir");
        let err = bind_unix(&missing, 7004, (0o777, None), false, 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("no-such-dir/.s.PGSQL.7004"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_take_over_leaves_the_new_file_when_the_old_listener_goes() {
        let dir = tempfile::tempdir().unwrap();
        let old = bind_unix(dir.path(), 7003, (0o777, None), false, 64).unwrap();
        let new = bind_unix(dir.path(), 7003, (0o777, None), true, 64).unwrap();
        drop(old);
        assert!(new.path.exists(), "the old listener removed the new file");
        let client = tokio::net::UnixStream::connect(&new.path).await;
        assert!(client.is_ok(), "the new listener gets new clients");
        drop(new);
        assert!(!dir.path().join(".s.PGSQL.7003").exists());
    }

    #[tokio::test]
    async fn reuse_port_lets_two_listeners_share_an_address() {
        let first = bind_tcp("127.0.0.1:0".parse().unwrap(), true, 64).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_tcp(addr, true, 64).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        let refused = bind_tcp(addr, false, 64).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse);
    }

    /// The accept queue's length as `ss` reports it (Send-Q of a
    /// listening socket) for the listening socket `filter` selects.
    fn queue_length(args: &[&str]) -> u32 {
        let out = std::process::Command::new("ss")
            .args(args)
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no socket: {args:?}"));
        // State Recv-Q Send-Q Local Peer (unix sockets: Netid first).
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == "LISTEN").unwrap() + 2;
        fields[at].parse().unwrap()
    }

    #[tokio::test]
    async fn listeners_queue_listen_backlog_connections() {
        let tcp = bind_tcp("127.0.0.1:0".parse().unwrap(), false, 37).unwrap();
        let port = tcp.local_addr().unwrap().port();
        let filter = format!("sport = :{port}");
        assert_eq!(queue_length(&["-ltnH", &filter]), 37);

        let dir = tempfile::tempdir().unwrap();
        let unix = bind_unix(dir.path(), 7005, (0o777, None), false, 41).unwrap();
        let path = unix.path.display().to_string();
        assert_eq!(queue_length(&["-lxH", "src", &path]), 41);
    }
}
