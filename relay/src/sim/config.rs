//! The simulator's configuration: a TOML or JSON file (chosen by its extension), read with
//! serde and checked, so that a bad file gets a message that says what to fix.

use std::path::{Path, PathBuf};

use easel_client::data::Partition;
use easel_protocol::Codec;
use easel_protocol::strategy::Strategy;
use serde::{Deserialize, Serialize};

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// One simulated run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of everything random: initial model, partition, epoch orders, speeds, QSGD's
    /// rounding, Swarm's neighbours.
    pub seed: u64,
    /// Simulated workers.
    pub workers: u32,
    /// How the training digits are dealt out: `iid`, `dirichlet:ALPHA` or `classes:K`.
    #[serde(default = "default_partition")]
    pub partition: String,
    /// The run ends at this virtual time, in seconds.
    pub duration_s: f64,
    /// The model is evaluated every this many virtual seconds (and at the end).
    pub eval_every_s: f64,
    /// Test digits evaluated (the first ones of the 2,000), all by default.
    #[serde(default)]
    pub eval_samples: Option<usize>,
    /// The accuracy whose first crossing is reported as the time to target.
    #[serde(default = "default_target")]
    pub target_accuracy: f64,
    pub train: Train,
    pub speed: Speed,
    pub network: Network,
    pub strategy: Strategy,
}

/// How each worker trains and what it sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    pub lr: f32,
    pub batch: u32,
    /// Local steps per round (strategies with their own `k` override it).
    pub local_steps: u32,
    #[serde(default)]
    pub momentum: f32,
    #[serde(default = "fp32")]
    pub codec_up: Codec,
    #[serde(default = "fp32")]
    pub codec_down: Codec,
    #[serde(default)]
    pub error_feedback: bool,
    /// Updates with a larger norm are refused.
    #[serde(default = "default_max_norm")]
    pub max_norm: f32,
}

/// How long a worker's SGD step takes in virtual time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speed {
    /// Milliseconds of one SGD step of one batch on a normal worker.
    pub step_ms: f64,
    /// Per-round variation.
    #[serde(default)]
    pub dist: SpeedDist,
    /// Workers `0..stragglers` are slower by `factor`.
    #[serde(default)]
    pub stragglers: u32,
    #[serde(default = "one")]
    pub factor: f64,
}

/// The distribution of a round's duration around `step_ms * steps`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SpeedDist {
    /// Every round takes exactly its nominal time.
    #[default]
    Fixed,
    /// Each round's time is multiplied by `exp(N(mu, sigma^2))`.
    Lognormal { mu: f64, sigma: f64 },
}

/// The network between a worker and the relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// One-way latency in milliseconds.
    pub latency_ms: f64,
    /// Bandwidth in megabits per second, each way.
    pub bandwidth_mbps: f64,
}

fn default_partition() -> String {
    "iid".into()
}
fn default_target() -> f64 {
    0.95
}
fn fp32() -> Codec {
    Codec::Fp32
}
fn default_max_norm() -> f32 {
    1e3
}
fn one() -> f64 {
    1.0
}

impl SimConfig {
    /// Reads a TOML file (`.toml`) or a JSON file (any other extension) and checks it.
    pub fn load(path: &Path) -> Result<SimConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = SimConfig::parse(path, &text)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Parses `text` as TOML when `path` ends in `.toml`, else as JSON.
    pub fn parse(path: &Path, text: &str) -> Result<SimConfig, ConfigError> {
        let parsed = if is_toml(path) {
            toml::from_str(text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(text).map_err(|e| e.to_string())
        };
        parsed.map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message: message.trim_end().to_string(),
        })
    }

    /// Checks every value; the message names the field and what it must be.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, not {v}"))
            }
        };
        if self.workers == 0 || self.workers > 100_000 {
            return Err(format!(
                "workers must be between 1 and 100000, not {}",
                self.workers
            ));
        }
        positive("duration_s", self.duration_s)?;
        positive("eval_every_s", self.eval_every_s)?;
        positive("train.lr", f64::from(self.train.lr))?;
        positive("speed.step_ms", self.speed.step_ms)?;
        positive("speed.factor", self.speed.factor)?;
        positive("network.bandwidth_mbps", self.network.bandwidth_mbps)?;
        positive("train.max_norm", f64::from(self.train.max_norm))?;
        if !(self.network.latency_ms.is_finite() && self.network.latency_ms >= 0.0) {
            return Err("network.latency_ms must be a number >= 0".into());
        }
        if !(0.0..=1.0).contains(&self.target_accuracy) {
            return Err("target_accuracy must be between 0 and 1".into());
        }
        if !(0.0..1.0).contains(&self.train.momentum) {
            return Err("train.momentum must be in [0, 1)".into());
        }
        if self.train.batch == 0 || self.train.local_steps == 0 {
            return Err("train.batch and train.local_steps must be at least 1".into());
        }
        if self.speed.stragglers > self.workers {
            return Err(format!(
                "speed.stragglers {} is more than the {} workers",
                self.speed.stragglers, self.workers
            ));
        }
        if let SpeedDist::Lognormal { mu, sigma } = self.speed.dist
            && !(mu.is_finite() && sigma.is_finite() && sigma >= 0.0)
        {
            return Err("speed.dist: lognormal needs a finite mu and a sigma >= 0".into());
        }
        for (name, c) in [
            ("train.codec_up", self.train.codec_up),
            ("train.codec_down", self.train.codec_down),
        ] {
            c.validate().map_err(|e| format!("{name}: {e}"))?;
        }
        if self.eval_samples == Some(0) {
            return Err("eval_samples must be at least 1".into());
        }
        self.partition_scheme()?;
        self.strategy
            .validate(self.workers)
            .map_err(|e| format!("strategy: {e}"))
    }

    /// The partition scheme, parsed.
    pub fn partition_scheme(&self) -> Result<Partition, String> {
        self.partition
            .parse::<Partition>()
            .map_err(|e| format!("partition: {e}"))
    }
}

/// Whether a path names a TOML file.
pub fn is_toml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SMALL: &str = r#"
seed = 1
workers = 4
duration_s = 2.0
eval_every_s = 1.0
[train]
lr = 0.1
batch = 8
local_steps = 2
[speed]
step_ms = 10.0
[network]
latency_ms = 1.0
bandwidth_mbps = 100.0
[strategy]
kind = "easgd"
alpha = 0.5
staleness = { kind = "inverse" }
tau_max = 16
"#;

    fn parse(text: &str) -> Result<SimConfig, String> {
        let c = SimConfig::parse(Path::new("x.toml"), text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn a_good_config_parses_in_toml_and_json_alike() {
        let c = parse(SMALL).unwrap();
        assert_eq!(c.strategy.name(), "easgd");
        assert_eq!(c.partition, "iid");
        let json = serde_json::to_string(&c).unwrap();
        let back = SimConfig::parse(Path::new("x.json"), &json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_configs_say_what_to_fix() {
        let cases = [
            (
                SMALL.replace("seed = 1", "seed = 1\nsed = 2"),
                "unknown field `sed`",
            ),
            (
                SMALL.replace("workers = 4\n", ""),
                "missing field `workers`",
            ),
            (SMALL.replace("lr = 0.1", "lr = -1.0"), "train.lr"),
            (
                SMALL.replace("\"easgd\"", "\"easy\""),
                "unknown variant `easy`",
            ),
            (
                SMALL.replace("alpha = 0.5", "alpha = 2.0"),
                "alpha 2 must be in [0, 1]",
            ),
            (
                SMALL.replace("seed = 1", "seed = 1\npartition = \"zigzag\""),
                "partition",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        let missing = SimConfig::load(Path::new("/nonexistent/sim.toml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("cannot read the configuration /nonexistent/sim.toml")
        );
    }
}
