//! A TCP relay between two of Herald's servers that can go silent: [`Relay::freeze`] stops
//! every byte in both directions while keeping each connection open, as a peer whose host
//! vanished (power cut, network partition) looks from the other side: no FIN, no RST, no
//! answers. The relay stops, and its connections close, when dropped.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A relay on a loopback port to one target address.
pub struct Relay {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    /// Accepts connections and owns their pipes; aborting it drops them all.
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts relaying connections made to a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut pipes = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                pipes.spawn(pipe(client_read, upstream_write, watching.clone()));
                pipes.spawn(pipe(upstream_read, client_write, watching.clone()));
            }
        });
        Ok(Relay { addr, frozen, task })
    }

    /// The relay's `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on no byte passes in either direction, and no connection is closed.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends; once frozen, holds both open and moves nothing.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *frozen.borrow_and_update() {
            // Keep the halves (and so the sockets) until the relay is dropped.
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = frozen.changed() => continue,
        };
        if *frozen.borrow() {
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
