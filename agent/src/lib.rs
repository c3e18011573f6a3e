//! herald-agent
