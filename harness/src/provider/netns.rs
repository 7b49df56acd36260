//! The netns provider.

use super::{Cleaned, Facts, Limitation, Provider, ProviderError, UpRequest};
use crate::cluster::Cluster;

pub struct NetnsProvider {}

impl NetnsProvider {
    pub fn new() -> NetnsProvider {
        NetnsProvider {}
    }
}

impl Default for NetnsProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl Provider for NetnsProvider {
    fn name(&self) -> &'static str {
        "netns"
    }
    fn up(&mut self, _req: &UpRequest<'_>) -> Result<Cluster, ProviderError> {
        Err(ProviderError::Prerequisite {
            provider: "netns",
            what: "not implemented yet".into(),
        })
    }
    fn down(&mut self) -> Result<(), ProviderError> {
        Ok(())
    }
    fn facts(&self) -> Facts {
        Facts::default()
    }
    fn limitations(&self) -> Vec<Limitation> {
        Vec::new()
    }
    fn clean_leftovers(&self) -> Result<Cleaned, ProviderError> {
        Ok(Cleaned::default())
    }
}
