//! The tcp-echo service, standing in for Istio's `istio/tcp-echo-server`
//! sample: on each of its ports (`9000,9001,9002`), every line a client
//! sends comes back with the prefix and a space before it (`world\n` is
//! answered `hello world\n`), until the client closes. A last line without
//! its newline is dropped, as the real one drops it. It is the plain TCP
//! service of the test apps: Envoy sees bytes, not requests.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The longest line answered; a longer one closes the connection, so a
/// client that never sends a newline cannot make the server grow.
pub const MAX_LINE: usize = 64 * 1024;

/// The ports of the sample's first argument (`9000,9001,9002`).
pub fn parse_ports(list: &str) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let port: u16 = part.parse().with_context(|| format!("{part:?} in {list:?} is not a port number"))?;
        if port == 0 {
            bail!("port 0 in {list:?}: give the port to listen on");
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Listens on every port (all addresses), all or none, and answers until
/// `shutdown` resolves.
pub async fn serve(
    ports: &[u16],
    prefix: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for &port in ports {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!("tcp-echo listening on {addr}, prefix: {prefix}");
        listeners.push(listener);
    }
    let prefix: Arc<str> = prefix.into();
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener, prefix.clone()));
    }
    shutdown.await;
    tasks.shutdown().await;
    Ok(())
}

/// Answers every connection `listener` accepts, each on a task of its own.
pub async fn accept_loop(listener: TcpListener, prefix: Arc<str>) {
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                tokio::spawn(answer(conn, peer, prefix.clone()));
            }
            // A full accept queue or a file limit passes; try again shortly.
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection: each line back with the prefix, until EOF or an error.
async fn answer(conn: TcpStream, peer: SocketAddr, prefix: Arc<str>) {
    let (read, mut write) = conn.into_split();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    let mut line = Vec::new();
    let mut lines = 0usize;
    loop {
        line.clear();
        reader.set_limit(MAX_LINE as u64 + 1);
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) if line.last() != Some(&b'\n') => {
                if line.len() > MAX_LINE {
                    tracing::warn!("{peer}: a line over {MAX_LINE} bytes, closing");
                }
                break;
            }
            Ok(_) => {
                let mut reply = Vec::with_capacity(prefix.len() + 1 + line.len());
                reply.extend_from_slice(prefix.as_bytes());
                reply.push(b' ');
                reply.extend_from_slice(&line);
                if let Err(e) = write.write_all(&reply).await {
                    tracing::warn!("{peer}: cannot answer: {e}");
                    break;
                }
                lines += 1;
            }
            Err(e) => {
                tracing::warn!("{peer}: cannot read: {e}");
                break;
            }
        }
    }
    tracing::info!("connection from {peer} closed after {lines} lines");
}
