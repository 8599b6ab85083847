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
    /// The file could not be read (its cause, the I/O error, is the error's source).
    #[error("cannot read the configuration {}", path.display())]
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
    /// The most memory, in MiB, the run may plan to use (its estimate is
    /// [`SimConfig::estimated_bytes`]); raise it to simulate more workers.
    #[serde(default = "default_memory_limit_mib")]
    pub memory_limit_mib: u64,
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
fn default_memory_limit_mib() -> u64 {
    4096
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
            ("train.codec_up", Some(self.train.codec_up)),
            ("train.codec_down", Some(self.train.codec_down)),
            ("strategy.quantize", self.quantize()),
        ] {
            if let Some(c) = c {
                check_codec(name, c)?;
            }
        }
        if let Some(tau_max) = self.tau_max()
            && tau_max == 0
        {
            return Err(format!(
                "strategy.tau_max 0 refuses every push made while another one was applied \
                 (most of them with {} workers); use at least 1 (16 is the relay's default)",
                self.workers
            ));
        }
        if self.eval_samples == Some(0) {
            return Err("eval_samples must be at least 1".into());
        }
        self.partition_scheme()?;
        self.strategy
            .validate(self.workers)
            .map_err(|e| format!("strategy: {e}"))
    }

    /// `tau_max` of the strategies that refuse pushes older than it.
    fn tau_max(&self) -> Option<u32> {
        match self.strategy {
            Strategy::Easgd { tau_max, .. }
            | Strategy::AsyncSgd { tau_max, .. }
            | Strategy::Fedbuff { tau_max, .. } => Some(tau_max),
            _ => None,
        }
    }

    /// The codec of SwarmSGD's exchanges, if any.
    fn quantize(&self) -> Option<Codec> {
        match self.strategy {
            Strategy::Swarm { quantize, .. } => quantize,
            _ => None,
        }
    }

    /// Checks the config against the data it will run on, before anything is allocated:
    /// every worker must get at least one training digit, and the memory the run would
    /// take ([`SimConfig::estimated_bytes`]) must fit in `memory_limit_mib`.
    pub fn check_fits(&self, train_digits: usize) -> Result<(), String> {
        if self.workers as usize > train_digits {
            return Err(format!(
                "workers {} is more than the {train_digits} training digits: every worker \
                 needs a shard of at least one digit; use at most {train_digits} workers",
                self.workers
            ));
        }
        let bytes = self.estimated_bytes();
        let limit = self.memory_limit_mib.saturating_mul(1 << 20);
        if bytes > limit {
            let need = bytes.div_ceil(1 << 20);
            return Err(format!(
                "{} workers would need about {need} MiB, more than memory_limit_mib = {}; \
                 use fewer workers, or raise memory_limit_mib to at least {need} if the \
                 machine has the memory",
                self.workers, self.memory_limit_mib
            ));
        }
        Ok(())
    }

    /// An upper estimate of the run's memory: per worker its model, momentum,
    /// error-feedback residual and (SwarmSGD) the relay's copy of its model, plus the
    /// center ring and the shared trainer and data.
    pub fn estimated_bytes(&self) -> u64 {
        let model = (PARAMS * 4) as u64;
        let per_worker = model
            * (1 + u64::from(self.train.momentum != 0.0)
                + u64::from(self.train.error_feedback)
                + u64::from(matches!(self.strategy, Strategy::Swarm { .. })))
            + 4096;
        let centers = model * (u64::from(self.tau_max().unwrap_or(1)) + 2);
        const SHARED: u64 = 64 << 20;
        u64::from(self.workers)
            .saturating_mul(per_worker)
            .saturating_add(centers)
            .saturating_add(SHARED)
    }

    /// The settings a live room takes from this run: the training of `train` and the
    /// strategy (`Hyper::with_strategy`); the rest of the file (workers, speeds, network,
    /// duration) describes the simulated class, which a live room has for real.
    pub fn room_hyper(&self) -> easel_protocol::Hyper {
        let t = &self.train;
        easel_protocol::Hyper {
            lr: t.lr,
            batch: t.batch,
            local_steps: t.local_steps,
            momentum: t.momentum,
            codec_up: t.codec_up,
            codec_down: t.codec_down,
            error_feedback: t.error_feedback,
            ..easel_protocol::Hyper::default()
        }
        .with_strategy(&self.strategy)
    }

    /// The partition scheme, parsed.
    pub fn partition_scheme(&self) -> Result<Partition, String> {
        self.partition
            .parse::<Partition>()
            .map_err(|e| format!("partition: {e}"))
    }
}

/// The model's parameter count (lenet5-28).
const PARAMS: usize = easel_protocol::LENET5_28.param_count;

/// A codec's parameters, checked against the model: top-k's `k` between 1 and the
/// parameter count, QSGD's bucket at most the parameter count.
fn check_codec(name: &str, c: Codec) -> Result<(), String> {
    c.validate().map_err(|e| format!("{name}: {e}"))?;
    match c {
        Codec::TopK { k } | Codec::TopKQsgd { k, .. } if k == 0 => Err(format!(
            "{name}: top-k with k = 0 sends nothing and never trains; use k between 1 and {PARAMS}"
        )),
        Codec::TopK { k } | Codec::TopKQsgd { k, .. } if k as usize > PARAMS => Err(format!(
            "{name}: k = {k} is more than the model's {PARAMS} parameters (each sent value \
             also carries its index, so it would send more than fp32); use at most {PARAMS}, \
             or fp32"
        )),
        Codec::Qsgd { bucket, .. } | Codec::TopKQsgd { bucket, .. } if bucket as usize > PARAMS => {
            Err(format!(
                "{name}: bucket = {bucket} is more than the model's {PARAMS} parameters; use at \
                 most {PARAMS} (one scale for the whole model)"
            ))
        }
        _ => Ok(()),
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
            (
                SMALL.replace("tau_max = 16", "tau_max = 0"),
                "strategy.tau_max 0 refuses every push",
            ),
            (
                SMALL.replace("[speed]", "codec_up = { kind = \"top_k\", k = 0 }\n[speed]"),
                "train.codec_up: top-k with k = 0 sends nothing",
            ),
            (
                SMALL.replace(
                    "[speed]",
                    "codec_down = { kind = \"top_k\", k = 44427 }\n[speed]",
                ),
                "train.codec_down: k = 44427 is more than the model's 44426 parameters",
            ),
            (
                SMALL.replace(
                    "[speed]",
                    "codec_up = { kind = \"qsgd\", bits = 8, bucket = 50000 }\n[speed]",
                ),
                "train.codec_up: bucket = 50000 is more than",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        let c = parse(&SMALL.replace("workers = 4", "workers = 9000")).unwrap();
        let e = c.check_fits(8000).unwrap_err();
        assert!(e.contains("use at most 8000 workers"), "{e}");
        let mut c = parse(&SMALL.replace("workers = 4", "workers = 8000")).unwrap();
        c.memory_limit_mib = 100;
        let e = c.check_fits(8000).unwrap_err();
        assert!(e.contains("raise memory_limit_mib to at least"), "{e}");
        c.memory_limit_mib = 4096;
        c.check_fits(8000).unwrap();
        let missing = SimConfig::load(Path::new("/nonexistent/sim.toml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("cannot read the configuration /nonexistent/sim.toml")
        );
    }
}
