//! The teacher's JSON API types: the control commands of `POST /api/rooms/CODE/control`,
//! the settings as the dashboard shows them, and the names of staleness rules and codecs.
//! Pure: parsing and validation only; [`crate::hub::RoomSlot::teacher_control`] applies
//! them. PROTOCOL.md, "Teacher API", documents every field.

use easel_protocol::codec::named_codecs;
use easel_protocol::message::MAX_DEGREE;
use easel_protocol::strategy::Topology;
use easel_protocol::{Codec, Hyper, LENET5_28, Merge, Staleness};
use serde::{Deserialize, Serialize};

use crate::room::RoomSettings;

/// The longest artificial delay the teacher may set, in milliseconds.
pub const MAX_DELAY_MS: u32 = 60_000;

/// One command of `POST /api/rooms/CODE/control`, tagged by `type`. `device` absent means
/// every training device of the room.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TeacherControl {
    /// Changes the listed settings; the others stay.
    Settings(SettingsChange),
    /// Makes a device (or all) wait `ms` after each round before pushing: a straggler.
    Delay {
        device: Option<u64>,
        ms: u32,
    },
    Pause {
        device: Option<u64>,
    },
    Resume {
        device: Option<u64>,
    },
    /// Closes the device's connection with a reason and refuses its resume.
    Remove {
        device: u64,
    },
    /// A new center from the room's init seed, the ledger emptied, and a new run.
    Reset {
        name: Option<String>,
    },
    /// `iid`, `dirichlet:ALPHA` or `classes:K`; connected devices are told to rejoin.
    Partition {
        scheme: String,
    },
    /// The backend a browser tab trains on: `auto` (it times both and takes the faster),
    /// `gpu` or `cpu`. It switches before its next round and keeps its model.
    Backend {
        device: u64,
        backend: String,
    },
}

/// Reads the `backend` of a [`TeacherControl::Backend`], or says what to write.
pub fn parse_backend_choice(text: &str) -> Result<easel_protocol::BackendChoice, String> {
    easel_protocol::BackendChoice::parse(text)
        .ok_or_else(|| format!("backend {text:?} is not one of auto, gpu or cpu"))
}

/// Settings to change; every field is optional. Adding a setting is one field here, one
/// line in [`SettingsChange::apply`] and [`SettingsView`], and one row in teacher.js's table.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    pub alpha: Option<f32>,
    /// `constant`, `inverse`, `exp:A` (`(1 + tau)^-A`) or `hinge:A:B`.
    pub staleness: Option<String>,
    pub tau_max: Option<u32>,
    pub local_steps: Option<u32>,
    pub lr: Option<f32>,
    pub batch: Option<u32>,
    pub momentum: Option<f32>,
    /// A codec name of [`codec_names`].
    pub codec_up: Option<String>,
    pub codec_down: Option<String>,
    pub error_feedback: Option<bool>,
    /// How the room merges: a name of [`parse_strategy`] (`easgd`, `fedavg`, `fedavg:M`,
    /// `async_sgd`, `bounded`, `bounded:B`, `adacomm:K0:KMIN:INTERVAL_S`, `fedbuff:M`,
    /// `swarm:TOPOLOGY`).
    pub strategy: Option<String>,
}

impl SettingsChange {
    /// `hyper` with the listed fields changed and checked, or what to fix.
    pub fn apply(&self, mut h: Hyper) -> Result<Hyper, String> {
        fn set<T: Copy>(slot: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        set(&mut h.alpha, self.alpha);
        set(&mut h.tau_max, self.tau_max);
        set(&mut h.local_steps, self.local_steps);
        set(&mut h.lr, self.lr);
        set(&mut h.batch, self.batch);
        set(&mut h.momentum, self.momentum);
        set(&mut h.error_feedback, self.error_feedback);
        if let Some(s) = &self.staleness {
            h.staleness = parse_staleness(s)?;
        }
        if let Some(c) = &self.codec_up {
            h.codec_up = parse_codec(c)?;
        }
        if let Some(c) = &self.codec_down {
            h.codec_down = parse_codec(c)?;
        }
        if let Some(m) = &self.strategy {
            h.merge = parse_strategy(m)?;
            if let Merge::Adacomm { k0, .. } = h.merge {
                h.local_steps = k0;
            }
        }
        h.validate().map_err(|field| {
            format!(
                "{field} is out of range (alpha in [0, 1], local_steps and batch at least 1, \
                 lr finite and >= 0, momentum in [0, 1), staleness exponents >= 0, \
                 strategy parameters at least 1 and adacomm's k_min <= k0)"
            )
        })?;
        Ok(h)
    }
}

/// Reads a staleness rule: `constant`, `inverse`, `exp:A` for `(1 + tau)^-A` (also
/// `poly:A`), or `hinge:A:B` for 1 up to `B`, then `1 / (A (tau - B) + 1)`.
pub fn parse_staleness(text: &str) -> Result<Staleness, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || {
        format!(
            "staleness {text:?} is not one of constant, inverse, exp:A (for example exp:0.5) \
             or hinge:A:B (for example hinge:1:4)"
        )
    };
    let num = |s: &str| s.parse::<f32>().ok().filter(|a| a.is_finite() && *a >= 0.0);
    let parts: Vec<&str> = t.split(':').collect();
    let s = match parts.as_slice() {
        ["constant"] => Staleness::Constant,
        ["inverse"] => Staleness::Inverse,
        ["exp" | "poly", a] => Staleness::Polynomial {
            a: num(a).ok_or_else(bad)?,
        },
        ["hinge", a, b] => Staleness::Hinge {
            a: num(a).ok_or_else(bad)?,
            b: b.parse().map_err(|_| bad())?,
        },
        _ => return Err(bad()),
    };
    Ok(s)
}

/// The text [`parse_staleness`] reads back.
pub fn staleness_name(s: Staleness) -> String {
    match s {
        Staleness::Constant => "constant".into(),
        Staleness::Inverse => "inverse".into(),
        Staleness::Polynomial { a } => format!("exp:{a}"),
        Staleness::Hinge { a, b } => format!("hinge:{a}:{b}"),
    }
}

/// Reads a strategy (PROTOCOL.md, "Strategies"; its shared numbers are the other settings):
/// `easgd`, `fedavg` (every worker), `fedavg:M` (the fastest `M`), `async_sgd`, `bounded`
/// (`s = tau_max`), `bounded:B` (and a view distance bound `B`),
/// `adacomm:K0:KMIN:INTERVAL_S`, `fedbuff:M`, `swarm:complete`, `swarm:ring`,
/// `swarm:regular:D`.
pub fn parse_strategy(text: &str) -> Result<Merge, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || {
        format!(
            "strategy {text:?} is not one of easgd, fedavg, fedavg:M (fastest M), async_sgd, \
             bounded, bounded:B, adacomm:K0:KMIN:INTERVAL_S (for example adacomm:32:4:10), \
             fedbuff:M, swarm:complete, swarm:ring or swarm:regular:D"
        )
    };
    let count = |s: &str| s.parse::<u32>().ok().filter(|m| *m >= 1).ok_or_else(bad);
    let positive = |s: &str| {
        s.parse::<f32>()
            .ok()
            .filter(|b| b.is_finite() && *b > 0.0)
            .ok_or_else(bad)
    };
    let parts: Vec<&str> = t.split(':').collect();
    Ok(match parts.as_slice() {
        ["easgd"] => Merge::Easgd,
        ["fedavg"] => Merge::Fedavg { m_of_n: None },
        ["fedavg", m] => Merge::Fedavg {
            m_of_n: Some(count(m)?),
        },
        ["async_sgd"] => Merge::AsyncSgd,
        ["bounded"] => Merge::Bounded { b: None },
        ["bounded", b] => Merge::Bounded {
            b: Some(positive(b)?),
        },
        ["adacomm", k0, k_min, interval] => Merge::Adacomm {
            k0: count(k0)?,
            k_min: count(k_min)?,
            interval_s: positive(interval)?,
        },
        ["fedbuff", m] => Merge::Fedbuff { m: count(m)? },
        ["swarm", topology @ ..] => Merge::Swarm {
            topology: topology
                .join(":")
                .parse()
                .ok()
                .filter(|t| !matches!(t, Topology::Regular(d) if *d == 0 || *d > MAX_DEGREE))
                .ok_or_else(bad)?,
        },
        _ => return Err(bad()),
    })
}

/// The text [`parse_strategy`] reads back.
pub fn strategy_name(m: Merge) -> String {
    match m {
        Merge::Easgd => "easgd".into(),
        Merge::Fedavg { m_of_n: None } => "fedavg".into(),
        Merge::Fedavg { m_of_n: Some(m) } => format!("fedavg:{m}"),
        Merge::AsyncSgd => "async_sgd".into(),
        Merge::Bounded { b: None } => "bounded".into(),
        Merge::Bounded { b: Some(b) } => format!("bounded:{b}"),
        Merge::Adacomm {
            k0,
            k_min,
            interval_s,
        } => format!("adacomm:{k0}:{k_min}:{interval_s}"),
        Merge::Fedbuff { m } => format!("fedbuff:{m}"),
        Merge::Swarm { topology } => format!("swarm:{topology}"),
    }
}

/// The codec names the teacher may choose (those of `easel bench relay`).
pub fn codec_names() -> Vec<&'static str> {
    named_codecs(LENET5_28.param_count)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// The codec of a name of [`codec_names`].
pub fn parse_codec(name: &str) -> Result<Codec, String> {
    let n = name.trim().to_ascii_lowercase();
    named_codecs(LENET5_28.param_count)
        .into_iter()
        .find(|(k, _)| *k == n)
        .map(|(_, c)| c)
        .ok_or_else(|| {
            format!(
                "codec {name:?} is unknown; use one of {}",
                codec_names().join(", ")
            )
        })
}

/// A codec's name in [`codec_names`], else its short description.
pub fn codec_name(c: Codec) -> String {
    named_codecs(LENET5_28.param_count)
        .into_iter()
        .find(|(_, k)| *k == c)
        .map_or_else(|| c.to_string(), |(n, _)| n.to_string())
}

/// A room's settings as the dashboard shows and sends them back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettingsView {
    #[serde(serialize_with = "short_f32")]
    pub alpha: f32,
    pub staleness: String,
    pub tau_max: u32,
    pub local_steps: u32,
    #[serde(serialize_with = "short_f32")]
    pub lr: f32,
    pub batch: u32,
    #[serde(serialize_with = "short_f32")]
    pub momentum: f32,
    pub codec_up: String,
    pub codec_down: String,
    pub error_feedback: bool,
    /// [`strategy_name`]'s text.
    pub strategy: String,
    /// `iid`, `dirichlet:ALPHA` or `classes:K`.
    pub partition: String,
    pub partition_seed: u64,
    pub shards: u32,
    #[serde(serialize_with = "short_f32")]
    pub max_norm: f32,
    pub init_seed: u64,
}

/// An `f32` as the shortest decimal that reads back to it (0.05, not 0.05000000074505806), so
/// a form shows what the teacher typed.
fn short_f32<S: serde::Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    match x.to_string().parse::<f64>() {
        Ok(v) if v.is_finite() => s.serialize_f64(v),
        _ => s.serialize_none(),
    }
}

impl SettingsView {
    pub fn of(s: &RoomSettings) -> SettingsView {
        let h = &s.hyper;
        SettingsView {
            alpha: h.alpha,
            staleness: staleness_name(h.staleness),
            tau_max: h.tau_max,
            local_steps: h.local_steps,
            lr: h.lr,
            batch: h.batch,
            momentum: h.momentum,
            codec_up: codec_name(h.codec_up),
            codec_down: codec_name(h.codec_down),
            error_feedback: h.error_feedback,
            strategy: strategy_name(h.merge),
            partition: s.partition.scheme.clone(),
            partition_seed: s.partition.seed,
            shards: s.partition.shards,
            max_norm: s.max_norm,
            init_seed: s.init_seed,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_parse_from_json_and_unknown_fields_are_refused() {
        let c: TeacherControl =
            serde_json::from_str(r#"{"type":"delay","device":3,"ms":800}"#).unwrap();
        assert_eq!(
            c,
            TeacherControl::Delay {
                device: Some(3),
                ms: 800
            }
        );
        let c: TeacherControl = serde_json::from_str(r#"{"type":"pause"}"#).unwrap();
        assert_eq!(c, TeacherControl::Pause { device: None });
        let c: TeacherControl =
            serde_json::from_str(r#"{"type":"settings","alpha":0.25,"codec_up":"qsgd8"}"#).unwrap();
        let TeacherControl::Settings(s) = c else {
            panic!("{c:?}")
        };
        let h = s.apply(RoomSettings::default().hyper).unwrap();
        assert_eq!(h.alpha, 0.25);
        assert_eq!(codec_name(h.codec_up), "qsgd8");
        assert!(
            serde_json::from_str::<TeacherControl>(r#"{"type":"settings","alpah":1}"#).is_err()
        );
        assert!(serde_json::from_str::<TeacherControl>(r#"{"type":"explode"}"#).is_err());
        assert!(serde_json::from_str::<TeacherControl>(r#"{"type":"remove"}"#).is_err());
    }

    #[test]
    fn out_of_range_settings_say_what_to_fix() {
        let h = RoomSettings::default().hyper;
        let bad = |c: SettingsChange| c.apply(h).unwrap_err();
        assert!(
            bad(SettingsChange {
                alpha: Some(1.5),
                ..Default::default()
            })
            .starts_with("alpha")
        );
        assert!(
            bad(SettingsChange {
                codec_down: Some("zip".into()),
                ..Default::default()
            })
            .contains("fp16")
        );
        assert!(
            bad(SettingsChange {
                staleness: Some("exp:-1".into()),
                ..Default::default()
            })
            .contains("exp:A")
        );
    }

    #[test]
    fn settings_show_the_decimals_the_teacher_typed() {
        let v = SettingsView::of(&RoomSettings::default()).to_json();
        assert_eq!(v["lr"].to_string(), "0.05");
        assert_eq!(v["alpha"].to_string(), "0.5");
        assert_eq!(v["staleness"], "inverse");
    }

    #[test]
    fn every_codec_name_round_trips() {
        for n in codec_names() {
            assert_eq!(codec_name(parse_codec(n).unwrap()), n);
        }
    }

    proptest! {
        #[test]
        fn staleness_names_round_trip(a in 0.0f32..10.0, b in 0u32..100, which in 0usize..4) {
            let s = [
                Staleness::Constant,
                Staleness::Inverse,
                Staleness::Polynomial { a },
                Staleness::Hinge { a, b },
            ][which];
            prop_assert_eq!(parse_staleness(&staleness_name(s)), Ok(s));
        }

        #[test]
        fn strategy_names_round_trip(m in 1u32..100, b in 0.01f32..10.0, which in 0usize..11) {
            let merge = [
                Merge::Easgd,
                Merge::Fedavg { m_of_n: None },
                Merge::Fedavg { m_of_n: Some(m) },
                Merge::AsyncSgd,
                Merge::Bounded { b: None },
                Merge::Bounded { b: Some(b) },
                Merge::Adacomm { k0: m, k_min: m.div_ceil(2), interval_s: b },
                Merge::Fedbuff { m },
                Merge::Swarm { topology: Topology::Complete },
                Merge::Swarm { topology: Topology::Ring },
                Merge::Swarm { topology: Topology::Regular(m) },
            ][which];
            prop_assert_eq!(parse_strategy(&strategy_name(merge)), Ok(merge));
        }

        #[test]
        fn any_strategy_text_parses_or_explains(text in ".{0,20}") {
            if let Err(e) = parse_strategy(&text) {
                prop_assert!(e.contains("fedavg"));
            }
        }

        #[test]
        fn any_text_parses_or_explains(text in ".{0,20}") {
            if let Err(e) = parse_staleness(&text) {
                prop_assert!(e.contains("constant, inverse"));
            }
        }
    }
}
