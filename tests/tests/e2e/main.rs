//! Herald's end-to-end scenarios, in one test binary. Each drives real servers over real
//! sockets: etcd, the control plane, the agent and an HTTPS receiver (see `herald-tests`).

mod audit;
mod auth;
mod client_certs;
mod console;
mod delivery;
mod delivery_log;
mod deploy;
mod discovery;
mod durability;
mod egress;
mod engine;
mod envelopes;
mod etcd_faults;
mod event_types;
mod fleet;
mod full_disk;
mod health;
mod interop;
mod metrics;
mod mtls;
mod oauth2;
mod operator_events;
mod payload_filters;
mod portal;
mod replay;
mod rest;
mod secrets;
mod sent_bodies;
mod ssrf;
mod store;
mod subscriptions;
mod tenancy;
mod test_send;
