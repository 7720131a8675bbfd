//! The `--tuning FILE` of `cluster up`: optional `[raft]` and `[liveness]` tables, applied to
//! every node's configuration. Missing keys keep the node's defaults; unknown keys are errors,
//! as in the node's own config file.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use tetrad_config::file::{LivenessTuning, RaftTuning};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub liveness: LivenessTuning,
}

impl Tuning {
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read tuning file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("tuning file {} is not valid", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_table_keeps_the_other_defaults() {
        let t = Tuning::parse("[raft]\nheartbeat_interval_ms = 100\n").expect("valid");
        assert_eq!(t.raft.heartbeat_interval_ms, 100);
        assert_eq!(t.raft.election_timeout_min_ms, RaftTuning::default().election_timeout_min_ms);
        assert_eq!(t.liveness.period_ms, LivenessTuning::default().period_ms);
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let t = Tuning::parse("").expect("valid");
        assert_eq!(t.liveness.renew_interval_ms, LivenessTuning::default().renew_interval_ms);
    }

    #[test]
    fn unknown_tables_and_keys_are_refused() {
        let err = Tuning::parse("[rafts]\n").unwrap_err().to_string();
        assert!(err.contains("rafts"), "{err}");
        let err = Tuning::parse("[liveness]\nperiod = 5\n").unwrap_err().to_string();
        assert!(err.contains("period"), "{err}");
    }
}
