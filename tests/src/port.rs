//! Loopback ports kept for one server across its restarts.
//!
//! A test that stops a server and starts it again on the same port must not lose the port in
//! between. The ports picked by binding port 0 come from the same range as the ephemeral ports
//! of outgoing connections, so any connection on the machine (another test's, say) may be given
//! the port while the server is down, and the restart then fails with "address in use".
//!
//! A [`HeldPort`] keeps a socket bound to the port for as long as the handle lives: bound with
//! `SO_REUSEADDR` and never listening. The kernel then gives the port to no one else, a client
//! connecting while the server is down is refused (as by a stopped server), and a server that
//! binds with `SO_REUSEADDR` (tokio, the standard library and Go all do) may still listen on it.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

/// A loopback port reserved until dropped; servers listen on it with [`HeldPort::listen`].
#[derive(Debug)]
pub struct HeldPort {
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl HeldPort {
    /// Reserves a free loopback port.
    pub fn new() -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = socket.local_addr()?;
        Ok(HeldPort {
            _socket: socket,
            addr,
        })
    }

    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A listener on the reserved address, for a server started (or started again) on it.
    pub async fn listen(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind(self.addr).await
    }
}

/// Why a server started on held ports did not come up.
pub(crate) enum StartError {
    /// Another process bound one of its ports first; new ports may help.
    PortTaken(anyhow::Error),
    /// Anything else.
    Failed(anyhow::Error),
}

impl StartError {
    /// The error, whichever kind it is.
    pub(crate) fn into_inner(self) -> anyhow::Error {
        match self {
            StartError::PortTaken(e) | StartError::Failed(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_port_is_refused_while_down_and_listened_on_again() -> anyhow::Result<()> {
        let port = HeldPort::new()?;
        for _ in 0..2 {
            let listener = port.listen().await?;
            let (_client, accepted) = tokio::join!(
                tokio::net::TcpStream::connect(port.addr()),
                listener.accept()
            );
            accepted?;
            drop(listener);
            let down = tokio::net::TcpStream::connect(port.addr()).await;
            assert_eq!(
                down.err().map(|e| e.kind()),
                Some(std::io::ErrorKind::ConnectionRefused),
                "nothing listens while the server is down"
            );
        }
        // No one else gets the port: a socket without SO_REUSEADDR (as an outgoing
        // connection's) cannot bind it.
        let other = TcpSocket::new_v4()?;
        assert!(
            other.bind(port.addr()).is_err(),
            "the port was given to someone else"
        );
        Ok(())
    }
}
