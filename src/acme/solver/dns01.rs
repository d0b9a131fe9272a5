//! dns-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.<domain>`.
//! Not available yet: configuration validation rejects dns-01 solvers, so
//! nothing reaches this module.

use super::{ChallengeData, SolverError};
use crate::config::Dns01;

#[derive(Default)]
pub struct Dns01Solver {}

fn unavailable() -> SolverError {
    SolverError::Dns("dns-01 is not supported by this version of certherd yet".into())
}

impl Dns01Solver {
    pub async fn present(&self, _cfg: &Dns01, _ch: &ChallengeData) -> Result<(), SolverError> {
        Err(unavailable())
    }

    pub async fn wait_propagated(
        &self,
        _records: &[(&Dns01, &ChallengeData)],
    ) -> Result<(), SolverError> {
        Err(unavailable())
    }

    pub async fn cleanup(&self, _cfg: &Dns01, _ch: &ChallengeData) {}

    pub async fn cleanup_all(&self) {}
}

pub async fn preflight(_cfg: &Dns01) -> Result<(), SolverError> {
    Err(unavailable())
}
