//! Herald's control plane.
pub mod store;
