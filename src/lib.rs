//! certherd: an ACME renewal and distribution agent.

pub mod acme;
pub mod cert;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod dns;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod pipeline;
pub mod plan;
pub mod process;
pub mod report;
pub mod store;
pub mod systemd;
pub mod verify;
