//! A TCP relay between two of Herald's servers that can go silent: [`Relay::freeze`] stops
//! every byte in both directions while keeping each connection open, as a peer whose host
//! vanished (power cut, network partition) looks from the other side: no FIN, no RST, no
//! answers. [`Relay::open_upstreams`] tells how many connections the target still holds open,
//! so a test sees the target cut off a peer that went silent. The relay stops, and its
//! connections close, when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A relay on a loopback port to one target address.
pub struct Relay {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    /// Connections to the target it has not closed yet.
    upstreams: Arc<AtomicUsize>,
    /// Accepts connections and owns their pipes; aborting it drops them all.
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts relaying connections made to a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, watching) = watch::channel(false);
        let upstreams = Arc::new(AtomicUsize::new(0));
        let open = upstreams.clone();
        let task = tokio::spawn(async move {
            let mut pipes = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                open.fetch_add(1, Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                pipes.spawn(pipe(client_read, upstream_write, watching.clone(), None));
                pipes.spawn(pipe(
                    upstream_read,
                    client_write,
                    watching.clone(),
                    Some(open.clone()),
                ));
            }
        });
        Ok(Relay {
            addr,
            frozen,
            upstreams,
            task,
        })
    }

    /// The relay's `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on no byte passes in either direction, and the relay closes no connection.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// How many of the connections made to the target it has not closed.
    pub fn open_upstreams(&self) -> usize {
        self.upstreams.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends. Once frozen, what arrives is dropped and both
/// halves are held open. `closes` counts down when `from` (the target's side) ends.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    closes: Option<Arc<AtomicUsize>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = frozen.changed() => continue,
        };
        if *frozen.borrow() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if let Some(closes) = closes {
        closes.fetch_sub(1, Ordering::SeqCst);
    }
    if *frozen.borrow() {
        // The other side hears nothing, not even the close, until the relay is dropped.
        let _held = to;
        std::future::pending::<()>().await;
    }
}
