//! The device table the dashboard shows and the state JSON carries: one [`DeviceRow`] per
//! training device that ever joined, with its alert ([`device_alert`]: amber or red, and
//! why, when its work is refused or it waits at a barrier); and the room's banner
//! ([`work_refused`]) when the settings throw away a large share of the class's work, with
//! the settings changes that would keep it. Pure: the room, its activity and its backend
//! reports in, rows out; every time is passed in.

use std::time::Instant;

use easel_protocol::codes::code;
use easel_protocol::message::MAX_TAU;
use easel_protocol::{Hyper, Merge, Staleness};
use serde::Serialize;

use crate::activity::{Activity, DeviceState, PushMark, device_state};
use crate::backends::{BackendView, Backends};
use crate::ledger::{Record, counts_as_refused_work};
use crate::room::{Room, kind_name, trains};

/// One row of the device table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceRow {
    pub id: u64,
    pub name: String,
    pub kind: &'static str,
    /// The backend it trains on: its last `Device` report's, else its Join's.
    pub backend: &'static str,
    /// Which backend trains and why, with the speeds it measured; `None` before a tab's
    /// first report (and always for bots).
    pub backend_report: Option<BackendView>,
    /// The backend the teacher chose for it (`auto`, `gpu`, `cpu`), `None` when none.
    pub backend_choice: Option<&'static str>,
    /// Local SGD steps per second over its last pushes.
    pub steps_per_s: Option<f64>,
    pub pushes: u64,
    pub accepted: u64,
    /// Its refused pushes since the ledger began (every code, RESYNC included).
    pub refused: u64,
    /// Mean staleness of its accepted pushes.
    pub mean_tau: Option<f64>,
    /// Its last answered pushes, oldest first: the staleness of each, refused ones too.
    pub recent: Vec<PushMark>,
    /// `||x_i - x~||` of its last accepted push.
    pub distance: Option<f32>,
    /// Seconds since the relay last heard from it.
    pub last_seen_s: f64,
    pub state: DeviceState,
    /// Amber or red, and why; `None` when all is well (or it is not training).
    pub alert: Option<Alert>,
    pub delay_ms: u32,
    pub shard: Option<u32>,
}

/// How bad a device's or the room's situation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Some of its recent work is refused, or it waits at a barrier.
    Amber,
    /// Most or all of its recent work is refused.
    Red,
}

/// A device's alert: its level, a word or two for the state cell, and the sentence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub level: Level,
    /// `work refused`, `some refused` or `at the barrier`.
    pub label: &'static str,
    /// The plain-words reason: "88 versions late, limit 16: its work is thrown away".
    pub reason: String,
}

/// How long a push must have been held at a barrier before its device turns amber: every
/// device but the last waits each round, and a wait under a second is the barrier working.
pub const BARRIER_AMBER_MS: u64 = 1_000;

/// The rule the room's strategy judges a push's staleness by, for the sentences.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Refused beyond `limit` versions and thrown away (EASGD, async SGD, FedBuff).
    TauMax { limit: u32 },
    /// Bounded staleness: not applied beyond `limit`; the device keeps its progress.
    Bounded { limit: u32 },
    /// FedAvg closing after the fastest `m`: later arrivals are refused.
    FastestM { m: u32 },
    /// A barrier over every device (`FedAvg`, `ADACOMM`), named.
    Barrier { name: &'static str },
    /// SwarmSGD.
    Swarm,
}

impl Rule {
    pub fn of(h: &Hyper) -> Rule {
        match h.merge {
            Merge::Easgd | Merge::AsyncSgd | Merge::Fedbuff { .. } => {
                Rule::TauMax { limit: h.tau_max }
            }
            Merge::Bounded { .. } => Rule::Bounded { limit: h.tau_max },
            Merge::Fedavg { m_of_n: Some(m) } => Rule::FastestM { m },
            Merge::Fedavg { m_of_n: None } => Rule::Barrier { name: "FedAvg" },
            Merge::Adacomm { .. } => Rule::Barrier { name: "ADACOMM" },
            Merge::Swarm { .. } => Rule::Swarm,
        }
    }

    fn barrier_name(self) -> &'static str {
        match self {
            Rule::Barrier { name } => name,
            _ => "FedAvg",
        }
    }
}

/// Whether a refusal would be refused again under today's `rule`: every refusal that is the
/// device's work judged ([`counts_as_refused_work`]), except a too-stale push the rule now
/// takes (its `tau` within a raised limit) or cannot see (a barrier over every device, whose
/// pushes are never late). So a fix the teacher applies clears the alerts and the banner
/// it answers at once, while the device's `recent` pushes still show what happened.
pub fn still_refused(m: &PushMark, rule: Rule) -> bool {
    if m.accepted || !counts_as_refused_work(m.code) {
        return false;
    }
    if m.code != code::TOO_STALE {
        return true;
    }
    match rule {
        Rule::TauMax { limit } | Rule::Bounded { limit } => m.tau > u64::from(limit),
        Rule::FastestM { .. } | Rule::Swarm => true,
        Rule::Barrier { .. } => false,
    }
}

/// A device held at a barrier: for how long, and how many devices the round still waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarrierWait {
    pub waited_ms: u64,
    pub waiting_for: u32,
}

/// A device's alert from its last answered pushes (`recent`, oldest first), the room's rule,
/// and its barrier wait, if it is held now.
///
/// The thresholds, over the recent pushes that count (accepted ones, and refusals the room's
/// settings would still make, [`still_refused`]; RESYNC is the relay's doing after a reset
/// or a restart, not the settings judging the work, and counts in neither):
/// - **red** when more than half of them were refused ("most or all");
/// - **amber** when at least one was, but no more than half;
/// - else **amber** when its push has waited at a barrier for [`BARRIER_AMBER_MS`] or more;
/// - else no alert.
///
/// The reason names the newest refusal: "88 versions late, limit 16: its work is thrown
/// away (8 of its last 8 pushes refused)".
pub fn device_alert(
    recent: &[PushMark],
    rule: Rule,
    barrier: Option<BarrierWait>,
) -> Option<Alert> {
    let counted: Vec<&PushMark> = recent
        .iter()
        .filter(|m| m.accepted || still_refused(m, rule))
        .collect();
    let refused: Vec<&PushMark> = counted.iter().copied().filter(|m| !m.accepted).collect();
    if let Some(last) = refused.last() {
        let (n, r) = (counted.len(), refused.len());
        let red = 2 * r > n;
        let reason = format!(
            "{} ({r} of its last {n} push{} refused)",
            refusal_sentence(last, rule),
            if n == 1 { "" } else { "es" }
        );
        return Some(Alert {
            level: if red { Level::Red } else { Level::Amber },
            label: if red { "work refused" } else { "some refused" },
            reason,
        });
    }
    let b = barrier.filter(|b| b.waited_ms >= BARRIER_AMBER_MS)?;
    let others = match b.waiting_for {
        0 => "the round to close".to_string(),
        1 => "1 slower device".to_string(),
        n => format!("{n} slower devices"),
    };
    Some(Alert {
        level: Level::Amber,
        label: "at the barrier",
        reason: format!(
            "waiting for {others} at the {} barrier ({:.0} s so far)",
            rule.barrier_name(),
            b.waited_ms as f64 / 1000.0
        ),
    })
}

/// Why one push was refused, in plain words.
fn refusal_sentence(m: &PushMark, rule: Rule) -> String {
    let late = |tau: u64| {
        if tau == 1 {
            "1 version late".to_string()
        } else {
            format!("{tau} versions late")
        }
    };
    match (m.code, rule) {
        (code::TOO_STALE, Rule::TauMax { limit }) => {
            format!("{}, limit {limit}: its work is thrown away", late(m.tau))
        }
        (code::TOO_STALE, Rule::Bounded { limit }) => format!(
            "{}, bound {limit}: not applied; it keeps its progress and pushes again",
            late(m.tau)
        ),
        (code::TOO_STALE, Rule::FastestM { m }) => {
            format!("came after the fastest {m} closed the round: its work is thrown away")
        }
        (code::TOO_STALE, _) => format!("{}: its work is thrown away", late(m.tau)),
        (code::NORM_TOO_LARGE, _) => {
            "its update is larger than max_norm: its work is thrown away".into()
        }
        (code::NON_FINITE, _) => "its update holds NaN or infinity: its work is thrown away".into(),
        (c, _) => format!("its pushes are refused (code {c}): its work is thrown away"),
    }
}

/// The device table: every training device that ever joined, by id. `now_ms` is the wall
/// clock of `now` (for barrier waits).
pub fn device_rows(
    room: &Room,
    activity: &Activity,
    backends: &Backends,
    now: Instant,
    now_ms: u64,
) -> Vec<DeviceRow> {
    let stats = room.ledger().workers();
    let rule = Rule::of(&room.settings().hyper);
    let live = |w: &crate::room::Worker| trains(w.kind) && w.connected && !w.paused && !w.removed;
    let active = room.workers().values().filter(|w| live(w)).count() as u32;
    let held = room
        .workers()
        .values()
        .filter(|w| live(w) && activity.held_since(w.id).is_some())
        .count() as u32;
    let need = match rule {
        Rule::FastestM { m } => m.min(active),
        _ => active,
    };
    room.workers()
        .values()
        .filter(|w| trains(w.kind))
        .map(|w| {
            let s = stats.get(&w.id);
            let state = device_state(w.removed, w.connected, w.paused, w.delay_ms);
            let recent = activity.verdicts(w.id);
            let barrier = activity.held_since(w.id).map(|since| BarrierWait {
                waited_ms: now_ms.saturating_sub(since),
                waiting_for: need.saturating_sub(held),
            });
            let training = matches!(state, DeviceState::Training | DeviceState::Delayed);
            DeviceRow {
                id: w.id,
                name: w.name.clone(),
                kind: kind_name(w.kind),
                backend: match backends.backend(w.id).unwrap_or(w.backend) {
                    easel_protocol::Backend::Cpu => "cpu",
                    easel_protocol::Backend::Gpu => "gpu",
                },
                backend_report: backends.view(w.id),
                backend_choice: backends.chosen(w.id).map(|c| c.name()),
                steps_per_s: activity.steps_per_s(w.id),
                pushes: s.map_or(0, |s| s.pushes),
                accepted: s.map_or(0, |s| s.accepted),
                refused: s.map_or(0, |s| s.refused),
                mean_tau: s.and_then(|s| s.mean_tau()),
                alert: training
                    .then(|| device_alert(&recent, rule, barrier))
                    .flatten(),
                recent,
                distance: s
                    .and_then(|s| s.last_worker_distance)
                    .filter(|d| d.is_finite()),
                last_seen_s: now.saturating_duration_since(w.last_seen).as_secs_f64(),
                state,
                delay_ms: w.delay_ms,
                shard: w.shard_index,
            }
        })
        .collect()
}

/// The window the room's banner looks back over.
pub const BANNER_WINDOW_MS: u64 = 60_000;
/// The banner shows when more than this share of the window's pushes was refused.
pub const BANNER_SHARE: f64 = 0.25;
/// ... and the window holds at least this many pushes (one unlucky push is no pattern).
pub const BANNER_MIN_PUSHES: u64 = 4;

/// The room's banner: the settings threw away a large share of the class's recent work.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkRefused {
    pub window_s: u64,
    /// Pushes answered in the window, and those refused ([`counts_as_refused_work`]).
    pub pushes: u64,
    pub refused: u64,
    /// `refused / pushes`, in [0, 1].
    pub share: f64,
    /// The staleness of the stalest refused push, and the room's `tau_max` now.
    pub max_tau: u64,
    pub tau_max: u32,
    /// The devices whose pushes were refused, by name, most refused first.
    pub devices: Vec<String>,
    /// The sentence, with the numbers.
    pub text: String,
    /// Settings changes that would keep the work, as the control API takes them.
    pub fixes: Vec<Fix>,
}

/// One way out: a button's label, what it does, and the `settings` command's fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fix {
    pub label: String,
    pub detail: String,
    pub settings: FixSettings,
}

/// The fields of a `{"type": "settings", ...}` command a [`Fix`] sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FixSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tau_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

/// The banner over the ledger's records (oldest first) of the last [`BANNER_WINDOW_MS`]
/// before `now_ms`: `Some` when more than [`BANNER_SHARE`] of at least
/// [`BANNER_MIN_PUSHES`] pushes were refused in a way today's settings would repeat
/// ([`still_refused`]: so applying a fix clears the banner at once; RESYNC pushes count in
/// neither figure). `name` gives a device's name.
pub fn work_refused<'a, I>(
    records: I,
    now_ms: u64,
    hyper: &Hyper,
    name: impl Fn(u64) -> String,
) -> Option<WorkRefused>
where
    I: DoubleEndedIterator<Item = &'a Record>,
{
    let since = now_ms.saturating_sub(BANNER_WINDOW_MS);
    let (mut pushes, mut refused, mut max_tau, mut stale) = (0u64, 0u64, 0u64, 0u64);
    let mut by: std::collections::BTreeMap<u64, u64> = Default::default();
    let rule = Rule::of(hyper);
    for r in records.rev().take_while(|r| r.wall_ms >= since) {
        let m = PushMark {
            tau: r.tau,
            accepted: r.accepted(),
            code: r.code,
        };
        if r.accepted() || counts_as_refused_work(r.code) {
            pushes += 1;
        }
        if still_refused(&m, rule) {
            refused += 1;
            max_tau = max_tau.max(r.tau);
            stale += u64::from(r.code == code::TOO_STALE);
            *by.entry(r.worker).or_default() += 1;
        }
    }
    if pushes < BANNER_MIN_PUSHES || (refused as f64) <= BANNER_SHARE * pushes as f64 {
        return None;
    }
    let mut devices: Vec<(u64, u64)> = by.into_iter().collect();
    devices.sort_by_key(|&(id, n)| (std::cmp::Reverse(n), id));
    let devices: Vec<String> = devices.into_iter().map(|(id, _)| name(id)).collect();
    let share = refused as f64 / pushes as f64;
    let verb = if matches!(rule, Rule::Bounded { .. }) {
        "was not applied"
    } else {
        "was thrown away"
    };
    let why = match rule {
        Rule::TauMax { limit } | Rule::Bounded { limit } if stale > 0 => {
            format!(", up to {max_tau} versions late against τ max {limit}")
        }
        Rule::FastestM { m } if stale > 0 => {
            format!(": they came after the fastest {m} closed their round")
        }
        _ => String::new(),
    };
    let note = if stale == 0 {
        " These refusals are not about lateness (see the ledger's codes): no setting here keeps \
         this work."
    } else {
        ""
    };
    let text = format!(
        "{:.0}% of the class's work in the last minute {verb}: {refused} of {pushes} pushes \
         refused{why} (from {}).{note}",
        100.0 * share,
        devices.join(", ")
    );
    let fixes = if stale > 0 {
        fixes(hyper, rule, max_tau)
    } else {
        Vec::new()
    };
    Some(WorkRefused {
        window_s: BANNER_WINDOW_MS / 1000,
        pushes,
        refused,
        share,
        max_tau,
        tau_max: hyper.tau_max,
        devices,
        text,
        fixes,
    })
}

/// The settings changes that keep pushes up to `max_tau` versions late: a `tau_max` that
/// covers them (the next multiple of 8, at most [`MAX_TAU`]), a staleness weight so late
/// work counts less (when pushes count in full now), bounded staleness (the device keeps
/// its progress); under FedAvg with the fastest M, waiting for every device.
fn fixes(h: &Hyper, rule: Rule, max_tau: u64) -> Vec<Fix> {
    let raised = max_tau
        .div_ceil(8)
        .saturating_mul(8)
        .min(u64::from(MAX_TAU)) as u32;
    let can_raise = raised > h.tau_max;
    let mut out = Vec::new();
    match rule {
        Rule::TauMax { .. } | Rule::Bounded { .. } => {
            if can_raise {
                let weighted = !matches!(h.staleness, Staleness::Constant);
                out.push(Fix {
                    label: format!("Raise τ max to {raised}"),
                    detail: if weighted {
                        format!(
                            "accept pushes up to {raised} versions late, weighed by s(τ) = {}",
                            easel_protocol::settings::staleness_name(h.staleness)
                        )
                    } else {
                        format!("accept pushes up to {raised} versions late, at full weight")
                    },
                    settings: FixSettings {
                        tau_max: Some(raised),
                        ..FixSettings::default()
                    },
                });
                if !weighted && !matches!(rule, Rule::Bounded { .. }) {
                    out.push(Fix {
                        label: format!("Weigh by staleness, τ max {raised}"),
                        detail: "late work counts, less the later it is: s(τ) = 1 / (1 + τ)".into(),
                        settings: FixSettings {
                            tau_max: Some(raised),
                            staleness: Some("inverse".into()),
                            ..FixSettings::default()
                        },
                    });
                }
            }
            if matches!(rule, Rule::TauMax { .. }) {
                out.push(Fix {
                    label: "Bounded staleness".into(),
                    detail: "a late push is not applied, but its device keeps its progress \
                             and pushes it again"
                        .into(),
                    settings: FixSettings {
                        strategy: Some("bounded".into()),
                        ..FixSettings::default()
                    },
                });
            }
        }
        Rule::FastestM { .. } => out.push(Fix {
            label: "Wait for every device".into(),
            detail: "FedAvg over the whole class: each round waits for the slowest".into(),
            settings: FixSettings {
                strategy: Some("fedavg".into()),
                ..FixSettings::default()
            },
        }),
        Rule::Barrier { .. } | Rule::Swarm => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomSettings;
    use easel_protocol::settings::SettingsChange;

    fn mark(tau: u64, c: u16) -> PushMark {
        PushMark {
            tau,
            accepted: c == 0,
            code: c,
        }
    }

    const EASGD: Rule = Rule::TauMax { limit: 16 };

    #[test]
    fn all_refused_is_red_with_the_lateness_and_the_limit() {
        let recent = [mark(88, code::TOO_STALE)];
        let a = device_alert(&recent, EASGD, None).expect("an alert");
        assert_eq!(a.level, Level::Red);
        assert_eq!(
            a.reason,
            "88 versions late, limit 16: its work is thrown away (1 of its last 1 push refused)"
        );
        let bounded = device_alert(&recent, Rule::Bounded { limit: 16 }, None).unwrap();
        assert!(
            bounded.reason.contains("keeps its progress"),
            "{}",
            bounded.reason
        );
    }

    #[test]
    fn the_level_follows_the_share_refused() {
        let ok = mark(2, 0);
        let bad = mark(20, code::TOO_STALE);
        let level = |r: &[PushMark]| device_alert(r, EASGD, None).map(|a| a.level);
        assert_eq!(level(&[ok, ok, ok]), None);
        assert_eq!(level(&[ok, ok, ok, bad]), Some(Level::Amber));
        assert_eq!(level(&[ok, bad]), Some(Level::Amber), "half is not most");
        assert_eq!(level(&[ok, bad, bad]), Some(Level::Red));
        assert_eq!(level(&[bad; 8]), Some(Level::Red));
        // A RESYNC after a reset is not the settings judging the work.
        let resync = mark(1, code::RESYNC);
        assert_eq!(level(&[resync]), None);
        assert_eq!(level(&[resync, resync, ok]), None);
    }

    #[test]
    fn a_fix_clears_the_alert_its_refusals_raised() {
        let recent = [
            mark(2, 0),
            mark(20, code::TOO_STALE),
            mark(20, code::TOO_STALE),
        ];
        assert!(device_alert(&recent, EASGD, None).is_some());
        assert!(device_alert(&recent, Rule::TauMax { limit: 24 }, None).is_none());
        assert!(device_alert(&recent, Rule::Barrier { name: "FedAvg" }, None).is_none());
        // A refusal for its content stays, whatever the limit.
        let norm = [mark(0, code::NORM_TOO_LARGE)];
        assert!(device_alert(&norm, Rule::TauMax { limit: 1024 }, None).is_some());
    }

    #[test]
    fn a_long_barrier_wait_is_amber_and_counts_the_slower_devices() {
        let rule = Rule::Barrier { name: "FedAvg" };
        let wait = |ms, n| {
            Some(BarrierWait {
                waited_ms: ms,
                waiting_for: n,
            })
        };
        assert_eq!(device_alert(&[], rule, wait(BARRIER_AMBER_MS - 1, 2)), None);
        let a = device_alert(&[mark(0, 0)], rule, wait(4_000, 2)).unwrap();
        assert_eq!(a.level, Level::Amber);
        assert_eq!(
            a.reason,
            "waiting for 2 slower devices at the FedAvg barrier (4 s so far)"
        );
        // Refusals outrank the barrier.
        let r = device_alert(
            &[mark(3, code::TOO_STALE)],
            Rule::FastestM { m: 2 },
            wait(9_000, 1),
        );
        assert_eq!(r.map(|a| a.level), Some(Level::Red));
    }

    fn rec(wall_ms: u64, worker: u64, tau: u64, c: u16) -> Record {
        Record {
            seq: 0,
            wall_ms,
            worker,
            base: 0,
            current: tau,
            tau,
            age_ms: None,
            local_steps: 8,
            alpha_eff: 0.0,
            worker_distance: f32::NAN,
            view_distance: f32::NAN,
            delta_norm: f32::NAN,
            bytes_in: 0,
            bytes_out: 0,
            version: None,
            peer: None,
            code: c,
            reason: String::new(),
        }
    }

    #[test]
    fn the_banner_counts_the_last_minute_and_offers_fixes_the_api_accepts() {
        let hyper = RoomSettings::default().hyper;
        let name = |id: u64| format!("bot-{id}");
        let now = 1_000_000;
        let mut records = Vec::new();
        // Long ago: refused, outside the window.
        for i in 0..50 {
            records.push(rec(
                now - BANNER_WINDOW_MS - 1000 + i,
                9,
                99,
                code::TOO_STALE,
            ));
        }
        for i in 0..6 {
            records.push(rec(now - 5000 + i, 1, 3, 0));
        }
        records.push(rec(now - 100, 3, 88, code::TOO_STALE));
        records.push(rec(now - 50, 2, 19, code::TOO_STALE));
        records.push(rec(now - 40, 3, 40, code::TOO_STALE));
        // RESYNC counts in neither figure.
        records.push(rec(now - 10, 4, 1_000_000, code::RESYNC));
        let b = work_refused(records.iter(), now, &hyper, name).expect("3 of 9 is above 25%");
        assert_eq!((b.pushes, b.refused, b.max_tau, b.tau_max), (9, 3, 88, 16));
        assert_eq!(b.devices, ["bot-3", "bot-2"]);
        assert!(b.text.starts_with("33% of the class's work in the last minute was thrown away: 3 of 9 pushes refused, up to 88 versions late against τ max 16"), "{}", b.text);
        let labels: Vec<&str> = b.fixes.iter().map(|f| f.label.as_str()).collect();
        assert_eq!(labels, ["Raise τ max to 88", "Bounded staleness"]);
        // Every fix is a settings command the control API takes.
        for f in &b.fixes {
            let json = serde_json::to_value(&f.settings).unwrap();
            let change: SettingsChange = serde_json::from_value(json).unwrap();
            assert!(change.apply(hyper).is_ok(), "{f:?}");
        }
        // The fix applied (τ max 88 covers every refusal): the banner goes at once.
        let raised = Hyper {
            tau_max: 88,
            ..hyper
        };
        assert!(work_refused(records.iter(), now, &raised, name).is_none());
        // Constant weights get the staleness-weight fix too.
        let constant = Hyper {
            staleness: Staleness::Constant,
            ..hyper
        };
        let b = work_refused(records.iter(), now, &constant, name).unwrap();
        assert_eq!(b.fixes.len(), 3);
        assert_eq!(b.fixes[1].settings.staleness.as_deref(), Some("inverse"));
        // A quarter or less, or too few pushes: no banner.
        assert!(work_refused(records[..56].iter(), now, &hyper, name).is_none());
        assert!(work_refused(records[56..58].iter(), now, &hyper, name).is_none());
        // A tau_max already at the ceiling is not raised.
        let top = Hyper {
            tau_max: MAX_TAU,
            ..hyper
        };
        let far = vec![rec(now, 1, 5000, code::TOO_STALE); 4];
        let b = work_refused(far.iter(), now, &top, name).unwrap();
        assert!(
            b.fixes.iter().all(|f| f.settings.tau_max.is_none()),
            "{:?}",
            b.fixes
        );
    }
}
