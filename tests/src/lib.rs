//! End-to-end harness for Herald.
//!
//! Each helper is a handle that owns one real thing and stops it when dropped:
//!
//! - [`Etcd`]: a real etcd server on free loopback ports ([`etcd`]);
//! - [`TestCa`]: a throwaway CA and the TLS configs that use it ([`tls`]);
//! - [`Receiver`]: an HTTPS webhook receiver whose answers can be scripted ([`receiver`]);
//! - [`eventually`]: waiting for a condition with a deadline ([`wait`]).
//!
//! Scenarios live in `tests/tests/` and read like stories built from these handles.

#![forbid(unsafe_code)]

pub mod etcd;
pub mod receiver;
pub mod tls;
pub mod wait;

pub use etcd::Etcd;
pub use receiver::{ReceivedRequest, Receiver, Response};
pub use tls::TestCa;
pub use wait::eventually;
