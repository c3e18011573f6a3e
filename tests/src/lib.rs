//! End-to-end harness for Herald.
//!
//! Each helper is a handle that owns one real thing and stops it when dropped:
//!
//! - [`Etcd`]: a real etcd server on free loopback ports ([`etcd`]);
//! - [`Postgres`]: a real PostgreSQL server with a fresh cluster on a loopback port ([`postgres`]);
//! - [`TestCa`]: a throwaway CA and the TLS configs that use it ([`tls`]);
//! - [`Receiver`]: an HTTPS webhook receiver whose answers can be scripted ([`receiver`]);
//! - [`ControlPlane`], [`Agent`]: Herald's servers in-process on real sockets ([`herald`]);
//! - [`AgentProcess`], [`ControlPlaneProcess`]: daemons as child processes, for `kill -9`
//!   ([`process`]);
//! - [`HeldPort`]: a loopback port kept for a server while it restarts ([`port`]);
//! - [`Relay`]: a TCP relay that can go silent, as a vanished host does ([`relay`]);
//! - [`Tmpfs`]: a small real disk to fill up ([`tmpfs`]);
//! - [`World`]: all of the above started together, and [`AgentAndReceiver`]: its agent and
//!   receiver alone ([`world`]);
//! - [`eventually`]: waiting for a condition with a deadline ([`wait`]).
//!
//! Scenarios live in `tests/tests/` and read like stories built from these handles.

#![forbid(unsafe_code)]

pub mod browser;
pub mod etcd;
pub mod frozen;
pub mod herald;
pub mod oauth2;
pub mod port;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod relay;
pub mod tls;
pub mod tmpfs;
pub mod wait;
pub mod world;

pub use browser::{Browser, open_console_session};
pub use etcd::{Etcd, EtcdCluster};
pub use frozen::FreezableDisk;
pub use herald::{
    Agent, AgentOptions, ConfigStore, ControlPlane, attempts_of, event, report, subscription,
};
pub use oauth2::TokenEndpoint;
pub use port::HeldPort;
pub use postgres::Postgres;
pub use process::{AgentProcess, ControlPlaneProcess, DaemonProcess, ServiceRun, run_as_service};
pub use proxy::EgressProxy;
pub use receiver::{ReceivedRequest, Receiver, Response};
pub use relay::Relay;
pub use tls::TestCa;
pub use tmpfs::Tmpfs;
pub use wait::eventually;
pub use world::{AgentAndReceiver, World, secret_of, signature_verifies};
