//! `easel report`: runs the committed experiments (`experiments/*.toml`) through the
//! simulator and writes `report.md` (one markdown table) and one SVG plot per experiment.
//!
//! An experiment file holds a `title`, a `[base]` simulation configuration and one or more
//! `[[variant]]` tables, each with a `name` and the settings it changes. A variant's
//! settings are merged into the base: tables merge key by key, except tables tagged by
//! `kind` (a strategy, a codec, a staleness function, a speed distribution), which replace
//! the base's whole.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use easel_client::data::Mnist;
use serde::Serialize;

use super::config::{ConfigError, SimConfig};
use super::svg::{Plot, Series, render};
use super::{SimError, SimResult};

/// One experiment file, parsed: its id (the file's stem), title and variants.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub id: String,
    pub title: String,
    pub variants: Vec<(String, SimConfig)>,
}

/// One experiment's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub id: String,
    pub title: String,
    pub runs: Vec<(String, SimResult)>,
}

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}: variant {variant}: {source}", path.display())]
    Sim {
        path: PathBuf,
        variant: String,
        #[source]
        source: SimError,
    },
    #[error("cannot write or list {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no experiment files (*.toml) in {}", .0.display())]
    Empty(PathBuf),
}

/// Merges `over` into `base`: tables key by key, except `kind`-tagged tables, which replace.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if !o.contains_key("kind") => {
                merge(b, o)
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Experiment {
    /// Reads and checks an experiment file.
    pub fn load(path: &Path) -> Result<Experiment, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Experiment::parse(path, &text)
    }

    /// Parses an experiment from its TOML text.
    pub fn parse(path: &Path, text: &str) -> Result<Experiment, ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let title = match doc.remove("title") {
            Some(toml::Value::String(t)) => t,
            _ => return Err(bad("needs a `title = \"...\"`".into())),
        };
        let Some(toml::Value::Table(base)) = doc.remove("base") else {
            return Err(bad(
                "needs a [base] table: the simulation every variant starts from".into(),
            ));
        };
        let Some(toml::Value::Array(variants)) = doc.remove("variant") else {
            return Err(bad("needs at least one [[variant]] with a `name`".into()));
        };
        if let Some(k) = doc.keys().next() {
            return Err(bad(format!(
                "unknown key `{k}`: an experiment has `title`, [base] and [[variant]]"
            )));
        }
        let mut out = Vec::new();
        for (i, v) in variants.into_iter().enumerate() {
            let toml::Value::Table(mut v) = v else {
                return Err(bad(format!("variant {i} is not a table")));
            };
            let Some(toml::Value::String(name)) = v.remove("name") else {
                return Err(bad(format!("variant {i} needs a `name`")));
            };
            let mut merged = base.clone();
            merge(&mut merged, v);
            let config: SimConfig = merged.try_into().map_err(|e: toml::de::Error| {
                bad(format!("variant {name}: {}", e.to_string().trim_end()))
            })?;
            config
                .validate()
                .map_err(|m| bad(format!("variant {name}: {m}")))?;
            out.push((name, config));
        }
        Ok(Experiment {
            id: path
                .file_stem()
                .map_or("experiment".into(), |s| s.to_string_lossy().into_owned()),
            title,
            variants: out,
        })
    }

    /// Runs every variant; `progress` hears each one's name and result.
    pub fn run(
        &self,
        data: &Mnist,
        mut progress: impl FnMut(&str, &SimResult),
    ) -> Result<Outcome, SimError> {
        let mut runs = Vec::new();
        for (name, config) in &self.variants {
            let r = super::run(config, data)?;
            progress(name, &r);
            runs.push((name.clone(), r));
        }
        Ok(Outcome {
            id: self.id.clone(),
            title: self.title.clone(),
            runs,
        })
    }
}

/// The experiment files in `dir`, sorted by name.
pub fn experiment_files(dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let io = |source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| super::config::is_toml(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ReportError::Empty(dir.to_path_buf()));
    }
    Ok(files)
}

/// A run's time to target, or the best accuracy it reached.
fn time_to_target(r: &SimResult) -> String {
    match r.time_to_target_s {
        Some(t) => format!("{t:.1} s"),
        None => format!("not reached (best {:.1}%)", 100.0 * r.best_accuracy),
    }
}

/// The markdown table of every run.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| experiment | variant | time to target | final accuracy | MB up + down | mean tau | p95 tau | mean view distance | B (max) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        for (name, r) in &o.runs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2}% | {:.1} | {:.2} | {} | {:.3} | {:.3} |",
                o.id,
                name,
                time_to_target(r),
                100.0 * r.final_accuracy,
                (r.bytes_up + r.bytes_down) as f64 / 1e6,
                r.staleness.mean,
                r.staleness.p95,
                r.meter.distance_mean,
                r.meter.distance_max,
            );
        }
    }
    s
}

/// The accuracy-over-time plot of one experiment.
pub fn plot(o: &Outcome) -> String {
    render(&Plot {
        title: o.title.clone(),
        x_label: "virtual time (s)".into(),
        y_label: "test accuracy".into(),
        series: o
            .runs
            .iter()
            .map(|(name, r)| Series {
                name: name.clone(),
                points: r.curve.iter().map(|p| (p.t_s, p.accuracy)).collect(),
            })
            .collect(),
    })
}

/// The whole report: the table, then a link to each plot.
pub fn report_markdown(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "# Simulated experiments\n\nWritten by `easel report` from the configs in `experiments/`; \
         every figure is virtual time on the simulator's clock. Time to target is the first \
         evaluation at or above each config's `target_accuracy` (95%).\n\n",
    );
    s.push_str(&table(outcomes));
    s.push('\n');
    for o in outcomes {
        let _ = writeln!(s, "- {}: [{}.svg]({}.svg)", o.title, o.id, o.id);
    }
    s
}

/// Runs every experiment in `dir` (or only those whose id is in `only`), writes
/// `report.md`, `results.json` and one `ID.svg` per experiment to `out`, and returns the
/// outcomes.
pub fn report(
    dir: &Path,
    out: &Path,
    only: &[String],
    data: &Mnist,
    mut progress: impl FnMut(&str, &str, &SimResult),
) -> Result<Vec<Outcome>, ReportError> {
    let mut outcomes = Vec::new();
    for path in experiment_files(dir)? {
        let e = Experiment::load(&path)?;
        if !only.is_empty() && !only.contains(&e.id) {
            continue;
        }
        let o = e
            .run(data, |v, r| progress(&e.id, v, r))
            .map_err(|source| ReportError::Sim {
                path: path.clone(),
                variant: String::new(),
                source,
            })?;
        outcomes.push(o);
    }
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| ReportError::Io { path, source })
    };
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    for o in &outcomes {
        write(&format!("{}.svg", o.id), &plot(o))?;
    }
    write("report.md", &report_markdown(&outcomes))?;
    let json = serde_json::to_string_pretty(&outcomes).expect("results serialize");
    write("results.json", &json)?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXP: &str = r#"
title = "Two strategies"
[base]
seed = 1
workers = 4
duration_s = 2.0
eval_every_s = 1.0
[base.train]
lr = 0.1
batch = 8
local_steps = 2
[base.speed]
step_ms = 10.0
[base.network]
latency_ms = 1.0
bandwidth_mbps = 100.0
[base.strategy]
kind = "easgd"
alpha = 0.5
staleness = { kind = "inverse" }
tau_max = 16

[[variant]]
name = "easgd"

[[variant]]
name = "fedavg, 2 stragglers"
strategy = { kind = "fedavg", k = 4 }
speed = { stragglers = 2, factor = 5.0 }
"#;

    #[test]
    fn variants_merge_into_the_base_and_tagged_tables_replace() {
        let e = Experiment::parse(Path::new("exp/two.toml"), EXP).unwrap();
        assert_eq!(e.id, "two");
        assert_eq!(e.variants.len(), 2);
        let (name, c) = &e.variants[1];
        assert_eq!(name, "fedavg, 2 stragglers");
        assert_eq!(c.strategy.name(), "fedavg");
        assert_eq!((c.speed.step_ms, c.speed.stragglers), (10.0, 2));
        assert_eq!(e.variants[0].1.strategy.name(), "easgd");
    }

    #[test]
    fn bad_experiments_say_what_is_wrong() {
        let p = Path::new("e.toml");
        for (text, want) in [
            (EXP.replace("title = ", "titel = "), "needs a `title"),
            (EXP.replace("k = 4", "k = 4, kk = 1"), "unknown field `kk`"),
            (
                EXP.replace("name = \"easgd\"", "nam = \"easgd\""),
                "needs a `name`",
            ),
            (format!("extra = 1\n{EXP}"), "unknown key `extra`"),
        ] {
            let e = Experiment::parse(p, &text).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }
}
