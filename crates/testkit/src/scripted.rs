//! A PostgreSQL server that misbehaves on cue, for the protocol edge cases
//! a real server cannot be made to produce (a broken message, a connection
//! cut in the middle of a result).
//!
//! It stands in front of a real node and relays every connection to it
//! byte for byte, so pgherd's probes and logins see a real server. Only a
//! simple `Query` whose text starts with a [`Script`]'s trigger is not
//! relayed: the client gets the script's bytes instead, and the connection
//! ends if the script says so. An encryption request is refused (`N`), as
//! a server without TLS does.

use std::sync::Arc;

use pgherd_wire::frontend;
use pgherd_wire::startup::{EncryptionRequest, ENCRYPTION_REFUSED};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// What the server does for a query starting with `trigger`.
#[derive(Debug, Clone)]
pub struct Script {
    pub trigger: &'static str,
    /// Sent to the client as they are, in place of the server's answer.
    pub reply: Vec<u8>,
    /// Close the connection after the reply.
    pub then_close: bool,
}

/// The scripted server; stops listening when dropped (connections it
/// relays end with their peers).
#[derive(Debug)]
pub struct ScriptedServer {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    /// Listens on a free loopback port and relays to the PostgreSQL server
    /// on loopback port `upstream`.
    pub async fn start(upstream: u16, scripts: Vec<Script>) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let scripts = Arc::new(scripts);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let scripts = Arc::clone(&scripts);
                tokio::spawn(async move {
                    // A connection that fails simply ends, as with a real server.
                    let _ = relay(client, upstream, &scripts).await;
                });
            }
        });
        ScriptedServer { port, task }
    }
}

async fn relay(client: TcpStream, upstream: u16, scripts: &[Script]) -> std::io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    let (mut client_in, client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let client_out = Arc::new(Mutex::new(client_out));

    // The startup phase: untagged packets until the StartupMessage.
    loop {
        let packet = read_untagged(&mut client_in).await?;
        let head: Option<&[u8; 8]> = packet.as_slice().try_into().ok();
        if head.and_then(EncryptionRequest::from_head).is_some() {
            client_out
                .lock()
                .await
                .write_all(&[ENCRYPTION_REFUSED])
                .await?;
            continue;
        }
        server_out.write_all(&packet).await?;
        break;
    }

    let to_client = Arc::clone(&client_out);
    let answers = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = server_in.read(&mut buf).await?;
            if n == 0 {
                return to_client.lock().await.shutdown().await;
            }
            to_client.lock().await.write_all(&buf[..n]).await?;
        }
    });
    let result = requests(&mut client_in, &mut server_out, &client_out, scripts).await;
    answers.abort();
    result
}

/// Relays the client's messages, answering the scripted ones itself.
async fn requests(
    client_in: &mut tokio::net::tcp::OwnedReadHalf,
    server_out: &mut OwnedWriteHalf,
    client_out: &Mutex<OwnedWriteHalf>,
    scripts: &[Script],
) -> std::io::Result<()> {
    loop {
        let mut header = [0u8; 5];
        if client_in.read_exact(&mut header).await.is_err() {
            return Ok(());
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        client_in.read_exact(&mut body).await?;
        let script = (header[0] == frontend::QUERY)
            .then(|| {
                let text = String::from_utf8_lossy(&body);
                scripts.iter().find(|s| text.starts_with(s.trigger))
            })
            .flatten();
        match script {
            Some(script) => {
                let mut out = client_out.lock().await;
                out.write_all(&script.reply).await?;
                if script.then_close {
                    return out.shutdown().await;
                }
            }
            None => {
                server_out.write_all(&header).await?;
                server_out.write_all(&body).await?;
            }
        }
    }
}

/// One startup-phase packet, its length included.
async fn read_untagged(from: &mut tokio::net::tcp::OwnedReadHalf) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len).await?;
    let total = u32::from_be_bytes(len) as usize;
    if !(8..=10_000).contains(&total) {
        return Err(std::io::Error::other("bad startup packet length"));
    }
    let mut packet = len.to_vec();
    packet.resize(total, 0);
    from.read_exact(&mut packet[4..]).await?;
    Ok(packet)
}
