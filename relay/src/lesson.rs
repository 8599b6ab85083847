//! Lessons: predict, vote, run, reveal. A lesson is one of the [`PRESETS`], a comparison
//! of two arms (two settings of the room) run one after the other on the class in the room,
//! each from the same fresh center, each until the center reaches the target accuracy or
//! the arm's time is up. Before the runs, every student page shows the question and its
//! answers and the students vote; after them, [`verdict`] says in a sentence what was
//! measured and which answer it supports (none, when the difference was too small to
//! tell), and the projector shows it beside the vote.
//!
//! The presets adapt to the class present ([`plan`]): FedAvg's backup workers are "the
//! fastest n - 1 of n"; the stragglers are the really slow devices when there are some (at
//! most half as fast as the median device), else the slowest one is made slow with the
//! teacher's delay (about 5x its round time).
//!
//! Pure: no I/O, no clock (times come in as wall-clock milliseconds), no locks. The hub
//! applies what a [`Step`] asks for (settings, delays, partition, a fresh run).

use std::collections::BTreeMap;

use easel_protocol::message::MAX_ANSWERS;
use easel_protocol::settings::SettingsChange;
use easel_protocol::{Question, QuestionPhase, Vote};
use serde::Serialize;

use crate::runs::Run;

/// A device at least this many times slower than the median device is a straggler as it is.
pub const NATURAL_STRAGGLER: f64 = 2.0;
/// A straggler made with the delay waits this many of the median device's rounds per round.
pub const MADE_SLOWDOWN: f64 = 4.0;
/// The delay of a made straggler is kept within these bounds, in milliseconds.
pub const MADE_DELAY_MS: (u32, u32) = (500, 10_000);
/// The delay of a made straggler when no device's speed is measured yet.
pub const UNMEASURED_DELAY_MS: u32 = 3_000;
/// Two arms' times to the target differ measurably when they differ by more than this
/// share of the sooner one (one run each: smaller differences are noise here)...
pub const SAME_TIME_SHARE: f64 = 0.2;
/// ... and by more than this many evaluation intervals.
pub const SAME_TIME_EVALS: f64 = 2.0;
/// Two arms that both missed the target differ measurably when their best accuracies
/// differ by more than this.
pub const SAME_ACCURACY: f64 = 0.05;
/// A model below this accuracy has not learned the ten digits ("No" in the non-IID and
/// gossip lessons).
pub const LEARNED: f64 = 0.6;
/// An arm's time limit: default and bounds, in seconds.
pub const ARM_SECONDS: (u32, u32, u32) = (90, 10, 600);
/// The target accuracy: default and bounds.
pub const TARGET: (f64, f64, f64) = (0.9, 0.2, 0.99);

/// What a lesson compares; each kind has its arms and its sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SyncAsync,
    Backup,
    Staleness,
    Compression,
    NonIid,
    Gossip,
}

/// One lesson of the catalogue.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Preset {
    /// The name the API takes (`POST .../lesson {"action":"ask","preset":KEY}`).
    pub key: &'static str,
    pub kind: Kind,
    pub title: &'static str,
    pub question: &'static str,
    /// Two to [`MAX_ANSWERS`] answers.
    pub answers: &'static [&'static str],
    /// Whether the lesson needs a straggler ([`plan`] finds or makes one).
    pub stragglers: bool,
    /// The fewest training devices the comparison means something with.
    pub min_devices: usize,
}

/// The catalogue, in the order of LESSONS.md.
pub const PRESETS: &[Preset] = &[
    Preset {
        key: "sync-async",
        kind: Kind::SyncAsync,
        title: "Stragglers: sync or async?",
        question: "One device is much slower than the others. Which reaches the target first?",
        answers: &[
            "Sync: everyone waits, then the models are averaged",
            "Async: nobody waits for anybody",
            "About the same",
        ],
        stragglers: true,
        min_devices: 2,
    },
    Preset {
        key: "backup",
        kind: Kind::Backup,
        title: "Backup workers: wait for all, or for the fastest?",
        question: "Each round, should the relay wait for every device, or only for the fastest n - 1 of n?",
        answers: &[
            "Wait for every device",
            "Only the fastest n - 1",
            "About the same",
        ],
        stragglers: true,
        min_devices: 2,
    },
    Preset {
        key: "staleness",
        kind: Kind::Staleness,
        title: "Stale updates: refuse them or weigh them down?",
        question: "A straggler's updates arrive many versions late. Which reaches the target first?",
        answers: &[
            "Refuse late updates (bounded staleness)",
            "Keep them, weighed down by how late they are",
            "About the same",
        ],
        stragglers: true,
        min_devices: 2,
    },
    Preset {
        key: "compression",
        kind: Kind::Compression,
        title: "Compression: fewer bytes, later?",
        question: "Each update is sent about 40x smaller (top 1% of values, 8 bits each). How much later does the class reach the target?",
        answers: &["Much later", "A little later", "No later"],
        stragglers: false,
        min_devices: 1,
    },
    Preset {
        key: "non-iid",
        kind: Kind::NonIid,
        title: "Non-IID data: a few digits per device",
        question: "Each device sees only a few kinds of digit (two or three). Does the shared model still learn all ten?",
        answers: &["Yes, as well", "Yes, but slower", "No"],
        stragglers: false,
        min_devices: 2,
    },
    Preset {
        key: "gossip",
        kind: Kind::Gossip,
        title: "Gossip: no center at all",
        question: "With no center, each device only averages with its neighbours on a ring. Does the class still learn?",
        answers: &["Yes, as fast", "Yes, but slower", "No"],
        stragglers: false,
        min_devices: 2,
    },
];

/// The preset of `key`, or what the keys are.
pub fn preset(key: &str) -> Result<&'static Preset, String> {
    PRESETS.iter().find(|p| p.key == key).ok_or_else(|| {
        let keys: Vec<&str> = PRESETS.iter().map(|p| p.key).collect();
        format!("no lesson {key:?}; the lessons are {}", keys.join(", "))
    })
}

/// One side of a comparison: a settings change on top of the room's settings from before
/// the lesson, and the partition (the room's own when `None`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arm {
    pub label: String,
    pub settings: SettingsChange,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

fn strategy(label: &str, strategy: &str) -> Arm {
    Arm {
        label: label.into(),
        settings: SettingsChange {
            strategy: Some(strategy.into()),
            ..SettingsChange::default()
        },
        partition: None,
    }
}

/// Classes per device of the non-IID arm for a room dealing `shards` shards: 2, or as
/// many as it takes for every digit to be on some shard (`shards * k >= 10`).
pub fn non_iid_classes(shards: usize) -> usize {
    2usize.max(10usize.div_ceil(shards.max(1))).min(10)
}

/// The two arms of `kind` for a class of `n` training devices, in a room dealing `shards`
/// shards.
pub fn arms(kind: Kind, n: usize, shards: usize) -> [Arm; 2] {
    match kind {
        Kind::SyncAsync => [
            strategy("sync FedAvg", "fedavg"),
            Arm {
                settings: SettingsChange {
                    staleness: Some("inverse".into()),
                    tau_max: Some(64),
                    ..strategy("", "easgd").settings
                },
                ..strategy("async EASGD", "easgd")
            },
        ],
        Kind::Backup => [
            strategy(&format!("FedAvg, all {n}"), "fedavg"),
            strategy(
                &format!("FedAvg, fastest {} of {n}", n.saturating_sub(1).max(1)),
                &format!("fedavg:{}", n.saturating_sub(1).max(1)),
            ),
        ],
        Kind::Staleness => [
            Arm {
                settings: SettingsChange {
                    tau_max: Some(4),
                    ..strategy("", "bounded").settings
                },
                ..strategy("refuse late: bounded staleness, s = 4", "bounded")
            },
            Arm {
                settings: SettingsChange {
                    staleness: Some("inverse".into()),
                    tau_max: Some(64),
                    ..strategy("", "easgd").settings
                },
                ..strategy("weigh late: EASGD, weight 1/(1+tau)", "easgd")
            },
        ],
        Kind::Compression => [
            Arm {
                label: "fp32 (no compression)".into(),
                settings: SettingsChange {
                    codec_up: Some("fp32".into()),
                    ..SettingsChange::default()
                },
                partition: None,
            },
            Arm {
                label: "top-k 1% + 8-bit".into(),
                settings: SettingsChange {
                    codec_up: Some("topk1-qsgd8".into()),
                    error_feedback: Some(true),
                    ..SettingsChange::default()
                },
                partition: None,
            },
        ],
        Kind::NonIid => [
            Arm {
                partition: Some("iid".into()),
                ..Arm {
                    label: "IID: every digit everywhere".into(),
                    settings: SettingsChange::default(),
                    partition: None,
                }
            },
            Arm {
                label: format!("non-IID: {} digits per device", non_iid_classes(shards)),
                settings: SettingsChange::default(),
                partition: Some(format!("classes:{}", non_iid_classes(shards))),
            },
        ],
        Kind::Gossip => [
            strategy("async EASGD (a center)", "easgd"),
            strategy("SwarmSGD ring (no center)", "swarm:ring"),
        ],
    }
}

/// A training device of the room as a lesson plans with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub worker: u64,
    pub name: String,
    /// Its measured local steps per second, when there are enough pushes to tell.
    pub steps_per_s: Option<f64>,
}

/// A straggler of a lesson.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Straggler {
    pub worker: u64,
    pub name: String,
    /// How many times slower than the median device (measured, or made by the delay);
    /// `None` when no speed was measured.
    pub slowdown: Option<f64>,
    /// Made slow with the teacher's delay (else slow as it is).
    pub made: bool,
}

/// How a lesson uses the class present.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub devices: usize,
    /// The delay every device of the class gets during the arms, in milliseconds.
    pub delays: BTreeMap<u64, u32>,
    pub stragglers: Vec<Straggler>,
    /// The plan in a sentence, for the dashboard.
    pub text: String,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    })
}

/// Plans `preset` for the training devices `class` (connected, not paused), whose rounds
/// are `local_steps` steps; the reason when the class is too small.
pub fn plan(preset: &Preset, class: &[Device], local_steps: u32) -> Result<Plan, String> {
    let n = class.len();
    if n < preset.min_devices {
        return Err(format!(
            "\"{}\" needs at least {} training devices and the room has {n}: open more tabs or start `easel bots`",
            preset.title, preset.min_devices
        ));
    }
    let mut delays: BTreeMap<u64, u32> = class.iter().map(|d| (d.worker, 0)).collect();
    if !preset.stragglers {
        return Ok(Plan {
            devices: n,
            delays,
            stragglers: Vec::new(),
            text: format!("The class as it is: {n} device{}.", plural(n)),
        });
    }
    let rates: Vec<f64> = class
        .iter()
        .filter_map(|d| d.steps_per_s)
        .filter(|r| *r > 0.0)
        .collect();
    let med = median(rates);
    // Slow as they are: at most half as fast as the median device (not all of them).
    let natural: Vec<Straggler> = match med {
        Some(m) => class
            .iter()
            .filter_map(|d| {
                let r = d.steps_per_s.filter(|r| *r > 0.0)?;
                (m / r >= NATURAL_STRAGGLER).then(|| Straggler {
                    worker: d.worker,
                    name: d.name.clone(),
                    slowdown: Some(m / r),
                    made: false,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    if !natural.is_empty() && natural.len() < n {
        let names = names(&natural);
        let text = format!(
            "{names} {} the straggler{}: {} than the median device, as {}.",
            if natural.len() == 1 { "is" } else { "are" },
            plural(natural.len()),
            slower(&natural),
            if natural.len() == 1 {
                "it is"
            } else {
                "they are"
            },
        );
        return Ok(Plan {
            devices: n,
            delays,
            stragglers: natural,
            text,
        });
    }
    // All about as fast: the slowest (else the newest) waits about 4 of its rounds.
    let Some(slowest) = class.iter().min_by(|a, b| {
        let ra = a.steps_per_s.unwrap_or(f64::INFINITY);
        let rb = b.steps_per_s.unwrap_or(f64::INFINITY);
        ra.total_cmp(&rb).then(b.worker.cmp(&a.worker))
    }) else {
        return Err("a lesson needs at least one training device".into());
    };
    let (delay, slowdown) = match med {
        Some(m) => {
            let round_ms = f64::from(local_steps.max(1)) / m * 1000.0;
            let delay = (MADE_SLOWDOWN * round_ms)
                .clamp(f64::from(MADE_DELAY_MS.0), f64::from(MADE_DELAY_MS.1))
                as u32;
            (delay, Some((round_ms + f64::from(delay)) / round_ms))
        }
        None => (UNMEASURED_DELAY_MS, None),
    };
    delays.insert(slowest.worker, delay);
    let s = Straggler {
        worker: slowest.worker,
        name: slowest.name.clone(),
        slowdown,
        made: true,
    };
    let how = match slowdown {
        Some(k) => format!(", about {}x slower", short(k)),
        None => String::new(),
    };
    let text = format!(
        "{}, so {} waits {} s per round{how}: the straggler.",
        if med.is_some() {
            format!("All {n} devices are about as fast (within {NATURAL_STRAGGLER}x)")
        } else {
            "No device's speed is measured yet".to_string()
        },
        s.name,
        short(f64::from(delay) / 1000.0),
    );
    Ok(Plan {
        devices: n,
        delays,
        stragglers: vec![s],
        text,
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn names(s: &[Straggler]) -> String {
    let v: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
    match v.len() {
        0 => String::new(),
        1 => v[0].to_string(),
        n => format!("{} and {}", v[..n - 1].join(", "), v[n - 1]),
    }
}

fn slower(s: &[Straggler]) -> String {
    let v: Vec<String> = s
        .iter()
        .filter_map(|s| s.slowdown)
        .map(|k| format!("{}x", short(k)))
        .collect();
    format!("{} slower", v.join(", "))
}

/// A number for a sentence: one decimal below 10, none above.
fn short(x: f64) -> String {
    if x.abs() < 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// What an arm measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmResult {
    pub label: String,
    pub run: u64,
    /// How long it ran.
    pub seconds: f64,
    /// When the center first scored at least the target, seconds into the run.
    pub reached_s: Option<f64>,
    pub best_accuracy: Option<f64>,
    pub pushes: u64,
    pub refused: u64,
    /// Bytes devices sent (pushes), over the run.
    pub bytes_up: u64,
    /// The median time between two evaluations: the resolution of `reached_s`.
    pub eval_gap_s: Option<f64>,
    /// Each evaluation that beat every earlier one: `(accuracy, seconds into the run)`.
    #[serde(skip)]
    pub records: Vec<(f64, f64)>,
}

impl ArmResult {
    /// `run`'s figures until `now_ms`, against `target`.
    pub fn of(label: &str, run: &Run, target: f64, now_ms: u64) -> ArmResult {
        let t = |ms: u64| ms.saturating_sub(run.started_ms) as f64 / 1000.0;
        let evals: Vec<_> = run.evals.iter().collect();
        let gaps = evals
            .windows(2)
            .map(|w| (w[1].wall_ms.saturating_sub(w[0].wall_ms)) as f64 / 1000.0)
            .collect();
        let mut records: Vec<(f64, f64)> = Vec::new();
        for e in &evals {
            if records.last().is_none_or(|r| e.accuracy > r.0) {
                records.push((e.accuracy, t(e.wall_ms)));
            }
        }
        let (mut pushes, mut refused, mut bytes_up) = (0, 0, 0);
        for p in run.pushes.iter() {
            pushes += 1;
            refused += u64::from(!p.accepted);
            bytes_up += p.bytes_in;
        }
        ArmResult {
            label: label.into(),
            run: run.id,
            seconds: t(now_ms),
            reached_s: evals
                .iter()
                .find(|e| e.accuracy >= target)
                .map(|e| t(e.wall_ms)),
            best_accuracy: evals.iter().map(|e| e.accuracy).reduce(f64::max),
            pushes,
            refused,
            bytes_up,
            eval_gap_s: median(gaps),
            records,
        }
    }

    /// When the center first scored at least `level`, seconds into the run.
    pub fn time_to(&self, level: f64) -> Option<f64> {
        self.records.iter().find(|r| r.0 >= level).map(|r| r.1)
    }

    fn bytes_per_push(&self) -> Option<f64> {
        (self.pushes > 0).then(|| self.bytes_up as f64 / self.pushes as f64)
    }
}

/// Which of two arms did better, as far as one run each can tell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Race {
    /// Arm `0` or `1` reached the target measurably sooner (or alone).
    Sooner(usize),
    /// Both reached it, within what one run each tells apart.
    Tie,
    /// Neither reached it; arm `0` or `1` got measurably higher.
    Higher(usize),
    /// Neither reached it, their best accuracies are about the same, and they reached the
    /// lower of the two at about the same time.
    TieBelow,
}

/// How two arms compare: the [`Race`], and when neither reached the target and their best
/// accuracies are about the same, the level both reached that it was run to (the lower
/// best): `Sooner` is then sooner to that level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    pub race: Race,
    pub level: Option<f64>,
}

/// Compares two arms' results ([`SAME_TIME_SHARE`], [`SAME_TIME_EVALS`], [`SAME_ACCURACY`]).
pub fn race(a: &ArmResult, b: &ArmResult) -> Comparison {
    let by_time = |ta: f64, tb: f64, tie: Race| {
        let gap = a.eval_gap_s.unwrap_or(0.0).max(b.eval_gap_s.unwrap_or(0.0));
        let tol = (SAME_TIME_SHARE * ta.min(tb)).max(SAME_TIME_EVALS * gap);
        if (ta - tb).abs() <= tol {
            tie
        } else {
            Race::Sooner(usize::from(tb < ta))
        }
    };
    let to_target = |race| Comparison { race, level: None };
    match (a.reached_s, b.reached_s) {
        (Some(ta), Some(tb)) => to_target(by_time(ta, tb, Race::Tie)),
        (Some(_), None) => to_target(Race::Sooner(0)),
        (None, Some(_)) => to_target(Race::Sooner(1)),
        (None, None) => {
            let (xa, xb) = (
                a.best_accuracy.unwrap_or(0.0),
                b.best_accuracy.unwrap_or(0.0),
            );
            if (xa - xb).abs() > SAME_ACCURACY {
                return to_target(Race::Higher(usize::from(xb > xa)));
            }
            let level = xa.min(xb);
            match (a.time_to(level), b.time_to(level)) {
                (Some(ta), Some(tb)) => Comparison {
                    race: by_time(ta, tb, Race::TieBelow),
                    level: Some(level),
                },
                _ => to_target(Race::TieBelow),
            }
        }
    }
}

/// What a lesson measured, in words.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub sentence: String,
    /// The answer the measurement supports; `None` when it supports none.
    pub supported: Option<u8>,
    /// Whether the arms differed by more than one run each tells apart.
    pub measurable: bool,
}

fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

/// How an arm did: "reached 90% at 37 s" or "did not reach 90% in 90 s (best 84%)".
fn outcome(r: &ArmResult, target: f64) -> String {
    match r.reached_s {
        Some(t) => format!("reached {} at {} s", pct(target), t.round()),
        None => format!(
            "did not reach {} in {} s (best {})",
            pct(target),
            r.seconds.round(),
            r.best_accuracy.map_or("not measured".into(), pct)
        ),
    }
}

/// The lesson's sentence and the answer it supports, from the two arms' results.
pub fn verdict(preset: &Preset, plan: &Plan, results: &[ArmResult], target: f64) -> Verdict {
    let [a, b] = results else {
        return Verdict {
            sentence: "The lesson stopped before both runs had finished: nothing to compare."
                .into(),
            supported: None,
            measurable: false,
        };
    };
    let Comparison { race: r, level } = race(a, b);
    // The time each arm is compared at: to the target, or to the level both reached.
    let at = |x: &ArmResult| level.map_or(x.reached_s, |l| x.time_to(l));
    let both_reached = match (level, at(a), at(b)) {
        (Some(l), Some(ta), Some(tb)) => format!(
            " Both reached {}: {} at {} s, {} at {} s.",
            pct(l),
            a.label,
            ta.round(),
            b.label,
            tb.round()
        ),
        _ => String::new(),
    };
    let both = format!(
        "{} {}; {} {}.{both_reached}",
        a.label,
        outcome(a, target),
        b.label,
        outcome(b, target)
    );
    let measurable = matches!(r, Race::Sooner(_) | Race::Higher(_));
    let tie_note = match r {
        Race::Tie => format!(
            " No measurable difference: within {}% or two evaluations of each other, one run each.",
            (100.0 * SAME_TIME_SHARE) as u32
        ),
        Race::TieBelow => format!(
            " No measurable difference: best accuracies within {} points{}, one run each.",
            (100.0 * SAME_ACCURACY) as u32,
            if level.is_some() {
                format!(
                    " and there within {}% or two evaluations of each other",
                    (100.0 * SAME_TIME_SHARE) as u32
                )
            } else {
                String::new()
            }
        ),
        _ => String::new(),
    };
    let times = |w: usize| -> String {
        let (x, y) = if w == 0 { (a, b) } else { (b, a) };
        match (at(x), at(y)) {
            (Some(tx), Some(ty)) if tx > 0.0 => format!(", {}x sooner", short(ty / tx)),
            _ => String::new(),
        }
    };
    let waited = || -> String {
        if plan.stragglers.is_empty() {
            return String::new();
        }
        let k = plan
            .stragglers
            .iter()
            .filter_map(|s| s.slowdown)
            .reduce(f64::max);
        format!(
            " The straggler{} {}{}.",
            plural(plan.stragglers.len()),
            names(&plan.stragglers),
            k.map_or(String::new(), |k| format!(
                " ran about {}x slower than the median device",
                short(k)
            ))
        )
    };
    let refused =
        |x: &ArmResult| format!("{} refused {} of {} pushes", x.label, x.refused, x.pushes);
    let (sentence, supported) = match preset.kind {
        Kind::SyncAsync | Kind::Backup | Kind::Staleness => {
            let supported = match r {
                Race::Sooner(w) | Race::Higher(w) => Some(w as u8),
                Race::Tie | Race::TieBelow => Some(2),
            };
            let lead = match r {
                Race::Sooner(w) => format!("{} first{}: ", [a, b][w].label, times(w)),
                Race::Higher(w) => format!("{} got further: ", [a, b][w].label),
                _ => String::new(),
            };
            let extra = match preset.kind {
                Kind::SyncAsync | Kind::Backup => {
                    let why = match (preset.kind, r) {
                        (_, Race::Tie | Race::TieBelow) => String::new(),
                        (Kind::SyncAsync, Race::Sooner(1) | Race::Higher(1)) => {
                            " Every sync round waited for the slowest device.".into()
                        }
                        (Kind::Backup, Race::Sooner(1) | Race::Higher(1)) => {
                            " Each round went on without the slowest device.".into()
                        }
                        _ => String::new(),
                    };
                    format!("{why}{} {}.", waited(), refused(b))
                }
                _ => format!("{} {}; {}.", waited(), refused(a), refused(b)),
            };
            (format!("{lead}{both}{tie_note}{extra}"), supported)
        }
        Kind::Compression => {
            let ratio = match (a.bytes_per_push(), b.bytes_per_push()) {
                (Some(x), Some(y)) if y > 0.0 => format!(
                    " {} sent {}x fewer bytes per push ({} against {}).",
                    b.label,
                    short(x / y),
                    bytes(y),
                    bytes(x)
                ),
                _ => String::new(),
            };
            let supported = match (r, at(a), at(b)) {
                (Race::Tie | Race::TieBelow, _, _) => Some(2),
                (Race::Sooner(0), Some(ta), Some(tb)) if tb < 1.5 * ta => Some(1),
                (Race::Sooner(0) | Race::Higher(0), _, _) => Some(0),
                (Race::Sooner(_) | Race::Higher(_), _, _) => Some(2),
            };
            (format!("{both}{tie_note}{ratio}"), supported)
        }
        Kind::NonIid | Kind::Gossip => {
            let best_b = b.best_accuracy.unwrap_or(0.0);
            let supported = match r {
                Race::Tie | Race::Sooner(1) | Race::TieBelow | Race::Higher(1) => Some(0),
                Race::Sooner(0) | Race::Higher(0) if best_b >= LEARNED => Some(1),
                _ => Some(2),
            };
            (format!("{both}{tie_note}"), supported)
        }
    };
    Verdict {
        sentence: capitalise(&sentence),
        supported,
        measurable,
    }
}

fn bytes(x: f64) -> String {
    if x >= 1e6 {
        format!("{} MB", short(x / 1e6))
    } else if x >= 1e3 {
        format!("{} kB", short(x / 1e3))
    } else {
        format!("{x:.0} B")
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Where a lesson stands.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The question is asked; students vote.
    Vote,
    /// Arm `index` is being set up (settings, delays, a fresh run).
    Starting { index: usize },
    /// Arm `index` runs as run `run` since `started_ms`.
    Arm {
        index: usize,
        run: u64,
        started_ms: u64,
    },
    /// Both arms ran: the verdict is out.
    Reveal,
    /// The teacher ended it (or started another run in the middle of it).
    Over,
}

/// What the hub does next for a lesson.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Set arm `index` up and start its run, then call [`Lesson::arm_started`].
    Start(usize),
    /// The verdict is out: put the room's settings, partition and delays back.
    Reveal,
    /// Another run replaced the arm's: the lesson is over; put the room back.
    Interrupted,
}

/// What a lesson needs of the room's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Room {
    /// Local steps per round (a made straggler waits some rounds of the median device).
    pub local_steps: u32,
    /// The shards the room deals (the non-IID arm's classes per device).
    pub shards: usize,
}

/// The options of `POST .../lesson {"action":"ask", ...}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Options {
    /// Each arm's time limit.
    pub arm_seconds: u32,
    /// The accuracy an arm stops at, in `(0, 1)`.
    pub target: f64,
}

impl Options {
    /// The options, with defaults for what is absent; the field to fix when out of range.
    pub fn new(arm_seconds: Option<u32>, target: Option<f64>) -> Result<Options, String> {
        let (s0, smin, smax) = ARM_SECONDS;
        let (t0, tmin, tmax) = TARGET;
        let arm_seconds = arm_seconds.unwrap_or(s0);
        let target = target.unwrap_or(t0);
        if !(smin..=smax).contains(&arm_seconds) {
            return Err(format!(
                "seconds {arm_seconds} is out of range: each run lasts {smin} to {smax} s"
            ));
        }
        if !(tmin..=tmax).contains(&target) {
            return Err(format!(
                "target {target} is out of range: an accuracy from {tmin} to {tmax}"
            ));
        }
        Ok(Options {
            arm_seconds,
            target,
        })
    }
}

/// One lesson of a room.
#[derive(Clone, Debug, Serialize)]
pub struct Lesson {
    pub id: u32,
    pub preset: &'static Preset,
    pub arms: [Arm; 2],
    pub plan: Plan,
    pub options: Options,
    pub asked_ms: u64,
    pub phase: Phase,
    /// Each student's vote, by worker id.
    #[serde(skip)]
    pub votes: BTreeMap<u64, u8>,
    pub results: Vec<ArmResult>,
    pub verdict: Option<Verdict>,
    /// Why it ended early, when it did.
    pub stopped: Option<String>,
}

impl Lesson {
    /// Asks `preset` of the class `class`: the vote opens.
    pub fn ask(
        id: u32,
        preset: &'static Preset,
        class: &[Device],
        room: Room,
        options: Options,
        now_ms: u64,
    ) -> Result<Lesson, String> {
        let Room {
            local_steps,
            shards,
        } = room;
        let plan = plan(preset, class, local_steps)?;
        debug_assert!((2..=MAX_ANSWERS).contains(&preset.answers.len()));
        Ok(Lesson {
            id,
            preset,
            arms: arms(preset.kind, plan.devices, shards),
            plan,
            options,
            asked_ms: now_ms,
            phase: Phase::Vote,
            votes: BTreeMap::new(),
            results: Vec::new(),
            verdict: None,
            stopped: None,
        })
    }

    /// Counts `worker`'s vote (replacing an earlier one); the reason it is not counted.
    pub fn vote(&mut self, worker: u64, v: Vote) -> Result<(), String> {
        if v.lesson != self.id {
            return Err(format!(
                "lesson {} is not the room's lesson ({})",
                v.lesson, self.id
            ));
        }
        if self.phase != Phase::Vote {
            return Err("the vote is closed: the runs have started".into());
        }
        if usize::from(v.answer) >= self.preset.answers.len() {
            return Err(format!(
                "answer {} is not one of the {} answers",
                v.answer,
                self.preset.answers.len()
            ));
        }
        self.votes.insert(worker, v.answer);
        Ok(())
    }

    /// Votes per answer.
    pub fn tally(&self) -> Vec<u32> {
        let mut t = vec![0; self.preset.answers.len()];
        for &a in self.votes.values() {
            t[usize::from(a)] += 1;
        }
        t
    }

    /// Closes the vote: the first arm is due.
    pub fn begin(&mut self) -> Result<Step, String> {
        if self.phase != Phase::Vote {
            return Err("the runs have already started".into());
        }
        self.phase = Phase::Starting { index: 0 };
        Ok(Step::Start(0))
    }

    /// Arm `index` started as run `run`.
    pub fn arm_started(&mut self, index: usize, run: u64, now_ms: u64) {
        if self.phase == (Phase::Starting { index }) {
            self.phase = Phase::Arm {
                index,
                run,
                started_ms: now_ms,
            };
        }
    }

    /// What is due now that the room's current run is `current`: nothing, the next arm,
    /// the reveal, or the end (another run replaced the arm's).
    pub fn advance(&mut self, current: &Run, now_ms: u64) -> Option<Step> {
        let Phase::Arm {
            index,
            run,
            started_ms,
        } = self.phase
        else {
            return None;
        };
        if current.id != run {
            self.results.clear();
            self.stop("another run was started in the middle of the lesson");
            return Some(Step::Interrupted);
        }
        let reached = current
            .evals
            .iter()
            .any(|e| e.accuracy >= self.options.target);
        let timed_out =
            now_ms.saturating_sub(started_ms) >= u64::from(self.options.arm_seconds) * 1000;
        if !reached && !timed_out {
            return None;
        }
        self.results.push(ArmResult::of(
            &self.arms[index].label,
            current,
            self.options.target,
            now_ms,
        ));
        if index + 1 < self.arms.len() {
            self.phase = Phase::Starting { index: index + 1 };
            return Some(Step::Start(index + 1));
        }
        self.verdict = Some(verdict(
            self.preset,
            &self.plan,
            &self.results,
            self.options.target,
        ));
        self.phase = Phase::Reveal;
        Some(Step::Reveal)
    }

    /// Ends the lesson with `why`; whether the room must be put back (an arm was on).
    pub fn stop(&mut self, why: &str) -> bool {
        let running = matches!(self.phase, Phase::Starting { .. } | Phase::Arm { .. });
        if self.phase != Phase::Over {
            self.stopped = (self.phase != Phase::Reveal).then(|| why.to_string());
            self.phase = Phase::Over;
        }
        running
    }

    /// The question as `worker`'s page shows it.
    pub fn question(&self, worker: u64) -> Question {
        let phase = match self.phase {
            Phase::Vote => QuestionPhase::Open,
            Phase::Starting { .. } | Phase::Arm { .. } => QuestionPhase::Closed,
            Phase::Reveal => QuestionPhase::Reveal,
            Phase::Over => QuestionPhase::Over,
        };
        let reveal = self.phase == Phase::Reveal;
        Question {
            lesson: self.id,
            phase,
            text: self.preset.question.into(),
            answers: self.preset.answers.iter().map(|a| a.to_string()).collect(),
            voted: self.votes.get(&worker).copied(),
            supported: if reveal {
                self.verdict.as_ref().and_then(|v| v.supported)
            } else {
                None
            },
            outcome: if reveal {
                self.verdict
                    .as_ref()
                    .map_or(String::new(), |v| v.sentence.clone())
            } else {
                String::new()
            },
        }
    }

    /// The lesson as the dashboard shows it (`lesson` in its messages).
    pub fn to_json(&self, voters: usize, now_ms: u64) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["tally"] = serde_json::json!(self.tally());
        v["votes"] = self.votes.len().into();
        v["voters"] = voters.into();
        v["server_ms"] = now_ms.into();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::{EvalPoint, PushPoint, Runs};
    use proptest::prelude::*;

    const ROOM: Room = Room {
        local_steps: 16,
        shards: 8,
    };

    fn dev(worker: u64, rate: Option<f64>) -> Device {
        Device {
            worker,
            name: format!("bot-{worker}"),
            steps_per_s: rate,
        }
    }

    #[test]
    fn every_preset_has_two_to_four_answers_and_a_unique_key() {
        for p in PRESETS {
            assert!((2..=MAX_ANSWERS).contains(&p.answers.len()), "{}", p.key);
            assert_eq!(preset(p.key).map(|q| q.key), Ok(p.key));
        }
        assert!(preset("nope").unwrap_err().contains("sync-async"));
        // Every arm's settings apply to the default room: no preset names a bad setting.
        for p in PRESETS {
            for n in 1..6 {
                for shards in 1..20 {
                    for arm in arms(p.kind, n, shards) {
                        arm.settings
                            .apply(easel_protocol::Hyper::default())
                            .unwrap_or_else(|e| panic!("{} {}: {e:?}", p.key, arm.label));
                        if let Some(s) = &arm.partition {
                            let part = s.parse::<easel_protocol::Partition>().expect("a partition");
                            part.validate_for(shards)
                                .unwrap_or_else(|e| panic!("{} {shards}: {e}", arm.label));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn backup_workers_are_the_fastest_n_minus_one_of_the_class() {
        for n in 2..40 {
            let [all, backup] = arms(Kind::Backup, n, 8);
            assert_eq!(all.settings.strategy.as_deref(), Some("fedavg"));
            assert_eq!(backup.settings.strategy, Some(format!("fedavg:{}", n - 1)));
            assert!(backup.label.contains(&format!("{} of {n}", n - 1)));
        }
    }

    #[test]
    fn a_really_slow_device_is_the_straggler_as_it_is() {
        let sa = preset("sync-async").unwrap();
        let class = [
            dev(1, Some(40.0)),
            dev(2, Some(38.0)),
            dev(3, Some(9.0)),
            dev(4, Some(41.0)),
        ];
        let p = plan(sa, &class, 16).unwrap();
        assert_eq!(p.stragglers.len(), 1);
        assert_eq!(p.stragglers[0].worker, 3);
        assert!(!p.stragglers[0].made);
        assert!(p.delays.values().all(|d| *d == 0), "{p:?}");
        assert!(p.text.contains("bot-3 is the straggler"), "{}", p.text);
    }

    #[test]
    fn an_equally_fast_class_gets_one_made_straggler_about_five_times_slower() {
        let sa = preset("sync-async").unwrap();
        // 16 steps at 40 steps/s: 400 ms rounds; the delay is 4 rounds, 1.6 s.
        let class = [dev(1, Some(40.0)), dev(2, Some(40.0)), dev(3, Some(40.0))];
        let p = plan(sa, &class, 16).unwrap();
        assert_eq!(p.stragglers.len(), 1);
        let s = &p.stragglers[0];
        assert!(s.made);
        assert_eq!(s.worker, 3, "ties go to the newest device");
        assert_eq!(p.delays[&3], 1_600);
        assert!((s.slowdown.unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(p.delays.values().filter(|d| **d > 0).count(), 1);
        // Nothing measured yet: the fixed delay.
        let p = plan(sa, &[dev(1, None), dev(2, None)], 16).unwrap();
        assert_eq!(p.delays[&2], UNMEASURED_DELAY_MS);
        assert_eq!(p.stragglers[0].slowdown, None);
        // Too small a class is refused with what to do.
        let e = plan(sa, &[dev(1, Some(3.0))], 16).unwrap_err();
        assert!(e.contains("at least 2") && e.contains("easel bots"), "{e}");
    }

    proptest! {
        /// Whatever the speeds, a plan needing stragglers has at least one and never all,
        /// lists every device's delay, and delays only made stragglers, within bounds.
        #[test]
        fn plans_always_have_a_straggler_and_bounded_delays(
            rates in prop::collection::vec(prop::option::of(0.1f64..500.0), 2..30),
            steps in 1u32..200,
        ) {
            let class: Vec<Device> = rates.iter().enumerate()
                .map(|(i, r)| dev(i as u64 + 1, *r)).collect();
            for p in PRESETS {
                let plan = plan(p, &class, steps).unwrap();
                prop_assert_eq!(plan.delays.len(), class.len());
                if p.stragglers {
                    prop_assert!(!plan.stragglers.is_empty());
                    prop_assert!(plan.stragglers.len() < class.len());
                } else {
                    prop_assert!(plan.stragglers.is_empty());
                }
                for (w, d) in &plan.delays {
                    let made = plan.stragglers.iter().any(|s| s.worker == *w && s.made);
                    if made {
                        prop_assert!(*d >= MADE_DELAY_MS.0 && *d <= MADE_DELAY_MS.1);
                    } else {
                        prop_assert_eq!(*d, 0);
                    }
                }
            }
        }

        /// The race is symmetric: swapping the arms swaps the winner and keeps a tie.
        #[test]
        fn the_race_is_symmetric(
            ta in prop::option::of(1.0f64..200.0), tb in prop::option::of(1.0f64..200.0),
            xa in 0.0f64..1.0, xb in 0.0f64..1.0, gap in prop::option::of(0.5f64..10.0),
            (sa, sb) in (1.0f64..200.0, 1.0f64..200.0),
        ) {
            // A curve: half the best at a second, the best at `s`.
            let r = |t: Option<f64>, x: f64, s: f64| ArmResult {
                label: String::new(), run: 0, seconds: 200.0, reached_s: t,
                best_accuracy: Some(x), pushes: 0, refused: 0, bytes_up: 0, eval_gap_s: gap,
                records: vec![(0.5 * x, 1.0f64.min(s)), (x, s)],
            };
            let (a, b) = (r(ta, xa, sa), r(tb, xb, sb));
            let flip = |x: Race| match x {
                Race::Sooner(w) => Race::Sooner(1 - w),
                Race::Higher(w) => Race::Higher(1 - w),
                t => t,
            };
            prop_assert_eq!(race(&a, &b).race, flip(race(&b, &a).race));
            prop_assert_eq!(race(&a, &b).level, race(&b, &a).level);
            // Reaching the target always beats missing it.
            if ta.is_some() && tb.is_none() {
                prop_assert_eq!(race(&a, &b).race, Race::Sooner(0));
            }
        }
    }

    fn run_with(id: u64, evals: &[(u64, f64)], pushes: &[(bool, u64)]) -> Run {
        let mut runs = Runs::new("x", serde_json::json!({}), 0);
        for _ in 1..id {
            runs.start("x", serde_json::json!({}), 0);
        }
        let r = runs.current_mut();
        r.started_ms = 1_000;
        for &(ms, accuracy) in evals {
            r.record_eval(EvalPoint {
                wall_ms: 1_000 + ms,
                version: ms,
                accuracy,
                loss: 1.0,
            });
        }
        for &(accepted, bytes_in) in pushes {
            r.record_push(PushPoint {
                wall_ms: 1_000,
                worker: 1,
                tau: 0,
                alpha_eff: 0.1,
                view_distance: 0.0,
                worker_distance: 0.0,
                bytes_in,
                bytes_out: 0,
                local_steps: 16,
                accepted,
                version: None,
                peer: None,
            });
        }
        runs.current().clone()
    }

    #[test]
    fn an_arm_ends_at_the_target_or_its_time_and_the_reveal_names_the_sooner() {
        let sa = preset("sync-async").unwrap();
        let class = [dev(1, Some(40.0)), dev(2, Some(40.0))];
        let opts = Options::new(Some(60), Some(0.9)).unwrap();
        let mut l = Lesson::ask(7, sa, &class, ROOM, opts, 0).unwrap();
        assert_eq!(l.question(1).phase, QuestionPhase::Open);
        l.vote(
            1,
            Vote {
                lesson: 7,
                answer: 1,
            },
        )
        .unwrap();
        l.vote(
            2,
            Vote {
                lesson: 7,
                answer: 0,
            },
        )
        .unwrap();
        l.vote(
            2,
            Vote {
                lesson: 7,
                answer: 1,
            },
        )
        .unwrap();
        assert!(
            l.vote(
                2,
                Vote {
                    lesson: 6,
                    answer: 1
                }
            )
            .is_err()
        );
        assert!(
            l.vote(
                2,
                Vote {
                    lesson: 7,
                    answer: 3
                }
            )
            .is_err()
        );
        assert_eq!(l.tally(), [0, 2, 0]);
        assert_eq!(l.begin(), Ok(Step::Start(0)));
        assert!(
            l.vote(
                1,
                Vote {
                    lesson: 7,
                    answer: 0
                }
            )
            .is_err(),
            "closed"
        );
        l.arm_started(0, 2, 1_000);
        // Sync: 80% at 30 s, nothing at 90% yet; then the time is up at 60 s.
        let sync = run_with(2, &[(10_000, 0.5), (30_000, 0.8)], &[(true, 100); 10]);
        assert_eq!(l.advance(&sync, 31_000), None);
        assert_eq!(l.advance(&sync, 61_000), Some(Step::Start(1)));
        l.arm_started(1, 3, 62_000);
        // Async reaches 90% at 20 s.
        let asy = run_with(
            3,
            &[(10_000, 0.7), (20_000, 0.92)],
            &[(true, 100), (false, 100)],
        );
        assert_eq!(l.advance(&asy, 22_000), Some(Step::Reveal));
        let v = l.verdict.clone().unwrap();
        assert_eq!(v.supported, Some(1));
        assert!(v.measurable);
        assert!(
            v.sentence.starts_with("Async EASGD first"),
            "{}",
            v.sentence
        );
        assert!(v.sentence.contains("reached 90% at 20 s"), "{}", v.sentence);
        assert!(
            v.sentence.contains("did not reach 90% in 60 s (best 80%)"),
            "{}",
            v.sentence
        );
        assert!(
            v.sentence.contains("refused 1 of 2 pushes"),
            "{}",
            v.sentence
        );
        let q = l.question(2);
        assert_eq!(
            (q.phase, q.voted, q.supported),
            (QuestionPhase::Reveal, Some(1), Some(1))
        );
        assert_eq!(q.outcome, v.sentence);
    }

    fn result(label: &str, reached: Option<f64>, best: f64, pushes: u64, bytes: u64) -> ArmResult {
        ArmResult {
            label: label.into(),
            run: 1,
            seconds: 60.0,
            reached_s: reached,
            best_accuracy: Some(best),
            pushes,
            refused: 0,
            bytes_up: bytes,
            eval_gap_s: Some(2.0),
            records: vec![(best, reached.unwrap_or(30.0))],
        }
    }

    #[test]
    fn when_neither_reaches_the_target_the_race_is_to_the_level_both_reached() {
        let sa = preset("sync-async").unwrap();
        let plan = plan(
            sa,
            &[dev(1, Some(9.0)), dev(2, Some(40.0)), dev(3, Some(40.0))],
            16,
        )
        .unwrap();
        let mut sync = result("sync FedAvg", None, 0.963, 10, 1);
        sync.records = vec![(0.5, 5.0), (0.963, 40.0)];
        let mut asy = result("async EASGD", None, 0.9695, 10, 1);
        asy.records = vec![(0.9, 2.0), (0.965, 3.0), (0.9695, 20.0)];
        let c = race(&sync, &asy);
        assert_eq!((c.race, c.level), (Race::Sooner(1), Some(0.963)));
        let v = verdict(sa, &plan, &[sync.clone(), asy], 0.97);
        assert_eq!(v.supported, Some(1));
        assert!(
            v.sentence
                .contains("Both reached 96%: sync FedAvg at 40 s, async EASGD at 3 s."),
            "{}",
            v.sentence
        );
        assert!(
            v.sentence.starts_with("Async EASGD first, 13x sooner"),
            "{}",
            v.sentence
        );
        // About as fast to that level too: no measurable difference.
        let mut close = result("async EASGD", None, 0.97, 10, 1);
        close.records = vec![(0.97, 38.0)];
        let c = race(&sync, &close);
        assert_eq!(c.race, Race::TieBelow);
        assert!(
            verdict(sa, &plan, &[sync, close], 0.99)
                .sentence
                .contains("No measurable difference")
        );
    }

    #[test]
    fn a_difference_within_one_runs_noise_is_said_to_be_none() {
        let sa = preset("sync-async").unwrap();
        let plan = plan(
            sa,
            &[dev(1, Some(9.0)), dev(2, Some(40.0)), dev(3, Some(40.0))],
            16,
        )
        .unwrap();
        let v = verdict(
            sa,
            &plan,
            &[
                result("sync FedAvg", Some(30.0), 0.91, 10, 1),
                result("async EASGD", Some(27.0), 0.92, 10, 1),
            ],
            0.9,
        );
        assert!(!v.measurable);
        assert_eq!(v.supported, Some(2));
        assert!(
            v.sentence.contains("No measurable difference"),
            "{}",
            v.sentence
        );
        assert!(v.sentence.contains("bot-1"), "{}", v.sentence);
    }

    #[test]
    fn compression_reports_its_bytes_and_how_much_later() {
        let c = preset("compression").unwrap();
        let plan = plan(c, &[dev(1, None)], 16).unwrap();
        let fp32 = result("fp32 (no compression)", Some(30.0), 0.95, 100, 17_800_000);
        let topk = result("top-k 1% + 8-bit", Some(40.0), 0.93, 100, 450_000);
        let v = verdict(c, &plan, &[fp32.clone(), topk], 0.9);
        assert_eq!(v.supported, Some(1), "{}", v.sentence);
        assert!(
            v.sentence
                .contains("40x fewer bytes per push (4.5 kB against 178 kB)"),
            "{}",
            v.sentence
        );
        let late = result("top-k", Some(70.0), 0.93, 100, 450_000);
        assert_eq!(
            verdict(c, &plan, &[fp32.clone(), late], 0.9).supported,
            Some(0)
        );
        let same = result("top-k", Some(33.0), 0.93, 100, 450_000);
        assert_eq!(verdict(c, &plan, &[fp32, same], 0.9).supported, Some(2));
    }

    #[test]
    fn non_iid_that_never_learns_is_a_no() {
        let n = preset("non-iid").unwrap();
        let plan = plan(n, &[dev(1, None), dev(2, None)], 16).unwrap();
        let iid = result("IID", Some(30.0), 0.95, 10, 1);
        let v = verdict(
            n,
            &plan,
            &[iid.clone(), result("non-IID", None, 0.4, 10, 1)],
            0.9,
        );
        assert_eq!(v.supported, Some(2), "{}", v.sentence);
        let v = verdict(
            n,
            &plan,
            &[iid.clone(), result("non-IID", None, 0.8, 10, 1)],
            0.9,
        );
        assert_eq!(v.supported, Some(1), "{}", v.sentence);
        let v = verdict(
            n,
            &plan,
            &[iid, result("non-IID", Some(31.0), 0.91, 10, 1)],
            0.9,
        );
        assert_eq!(v.supported, Some(0), "{}", v.sentence);
    }

    #[test]
    fn another_run_in_the_middle_stops_the_lesson() {
        let g = preset("gossip").unwrap();
        let opts = Options::new(None, None).unwrap();
        let mut l = Lesson::ask(1, g, &[dev(1, None), dev(2, None)], ROOM, opts, 0).unwrap();
        l.begin().unwrap();
        l.arm_started(0, 5, 0);
        let other = run_with(6, &[], &[]);
        assert_eq!(l.advance(&other, 1_000), Some(Step::Interrupted));
        assert_eq!(l.phase, Phase::Over);
        assert!(l.stopped.as_deref().unwrap().contains("another run"));
        assert_eq!(l.question(1).phase, QuestionPhase::Over);
        assert!(Options::new(Some(5), None).is_err());
        assert!(Options::new(None, Some(1.5)).is_err());
    }
}
