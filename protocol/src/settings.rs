//! The one owner of a room's settings vocabulary: every setting's name, its text grammar,
//! its check, and the schema the dashboard builds its form from. The relay's teacher API,
//! the dashboard (through `GET /api/settings`) and the command line all read settings here;
//! PROTOCOL.md ("Teacher API") documents the same names.

use serde::{Deserialize, Serialize};

use crate::codec::named_codecs;
use crate::message::MAX_DEGREE;
use crate::strategy::Topology;
use crate::{Codec, Hyper, LENET5_28, Merge, Staleness};

/// A setting the teacher asked for that cannot be applied: which one, and what to write
/// instead.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SettingsError {
    /// The setting's key in [`SCHEMA`] (the JSON field of a settings change).
    pub field: &'static str,
    /// What is wrong and what to write instead, in words a teacher reads.
    pub message: String,
}

/// How a setting is entered.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A number in `[min, max]` (`max` absent: no upper bound), entered in steps of `step`.
    Number {
        min: f32,
        max: Option<f32>,
        step: f32,
    },
    /// A whole number of at least `min`.
    Int { min: u32 },
    /// Text in a grammar ([`Setting::unit`] says which).
    Text,
    /// One of [`codec_names`].
    Codec,
    /// On or off.
    Bool,
}

/// One setting of a room, as the dashboard's form shows it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Setting {
    /// The JSON field of a settings change and of the settings the relay reports.
    pub key: &'static str,
    /// The form's label.
    pub label: &'static str,
    /// The unit, the range or the grammar, short.
    pub unit: &'static str,
    #[serde(flatten)]
    pub kind: Kind,
    /// One line for a teacher: what it changes.
    pub help: &'static str,
}

/// Every setting a teacher may change, in the form's order. `GET /api/settings` serves it.
pub const SCHEMA: &[Setting] = &[
    Setting {
        key: "alpha",
        label: "elastic α",
        unit: "0 … 1",
        kind: Kind::Number {
            min: 0.0,
            max: Some(1.0),
            step: 0.05,
        },
        help: "How far each push moves the center toward the device's model (and the device toward the center).",
    },
    Setting {
        key: "staleness",
        label: "staleness rule s(τ)",
        unit: "constant | inverse | exp:A | hinge:A:B",
        kind: Kind::Text,
        help: "How much less a late push counts: τ is how many merges happened while the device computed.",
    },
    Setting {
        key: "tau_max",
        label: "τ max",
        unit: "versions",
        kind: Kind::Int { min: 0 },
        help: "Pushes later than this many versions are refused; the device starts again from the center.",
    },
    Setting {
        key: "local_steps",
        label: "local steps K",
        unit: "steps per push",
        kind: Kind::Int { min: 1 },
        help: "SGD steps each device takes between two pushes.",
    },
    Setting {
        key: "lr",
        label: "learning rate",
        unit: "per step",
        kind: Kind::Number {
            min: 0.0,
            max: None,
            step: 0.005,
        },
        help: "The size of each SGD step on the devices.",
    },
    Setting {
        key: "batch",
        label: "batch",
        unit: "digits per step",
        kind: Kind::Int { min: 1 },
        help: "Digits each SGD step averages its gradient over.",
    },
    Setting {
        key: "momentum",
        label: "momentum",
        unit: "0 … <1",
        kind: Kind::Number {
            min: 0.0,
            max: Some(0.99),
            step: 0.1,
        },
        help: "How much of the last step each SGD step keeps (0: plain SGD).",
    },
    Setting {
        key: "codec_up",
        label: "push codec",
        unit: "devices → relay",
        kind: Kind::Codec,
        help: "How a device compresses its update before sending it.",
    },
    Setting {
        key: "codec_down",
        label: "center codec",
        unit: "relay → devices",
        kind: Kind::Codec,
        help: "How the relay compresses the center it sends back.",
    },
    Setting {
        key: "error_feedback",
        label: "error feedback",
        unit: "on pushes",
        kind: Kind::Bool,
        help: "Devices keep what compression dropped and add it to their next push.",
    },
    Setting {
        key: "strategy",
        label: "strategy",
        unit: "easgd | fedavg[:M] | async_sgd | bounded[:B] | adacomm:K0:KMIN:S | fedbuff:M | swarm:complete | swarm:ring | swarm:regular:D",
        kind: Kind::Text,
        help: "How the relay merges the devices' work (PROTOCOL.md, \"Strategies\").",
    },
];

/// Settings to change; every field is optional. Adding a setting is one field here, one
/// line in [`SettingsChange::apply`], one row of [`SCHEMA`] (the dashboard builds its form
/// from it) and one in the relay's settings view.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// `constant`, `inverse`, `exp:A` (`(1 + tau)^-A`) or `hinge:A:B`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tau_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_steps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f32>,
    /// A codec name of [`codec_names`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec_up: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec_down: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_feedback: Option<bool>,
    /// How the room merges: a name of [`parse_strategy`] (`easgd`, `fedavg`, `fedavg:M`,
    /// `async_sgd`, `bounded`, `bounded:B`, `adacomm:K0:KMIN:INTERVAL_S`, `fedbuff:M`,
    /// `swarm:TOPOLOGY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

impl SettingsChange {
    /// Every setting of `h`, in the vocabulary's words: applied to any settings, it gives
    /// `h` (when `h`'s codecs have names; others are refused with the codec named).
    pub fn of(h: &Hyper) -> SettingsChange {
        let v = HyperView::of(h);
        SettingsChange {
            alpha: Some(v.alpha),
            staleness: Some(v.staleness),
            tau_max: Some(v.tau_max),
            local_steps: Some(v.local_steps),
            lr: Some(v.lr),
            batch: Some(v.batch),
            momentum: Some(v.momentum),
            codec_up: Some(v.codec_up),
            codec_down: Some(v.codec_down),
            error_feedback: Some(v.error_feedback),
            strategy: Some(v.strategy),
        }
    }

    /// `hyper` with the listed fields changed and checked, or the field to fix and how.
    pub fn apply(&self, mut h: Hyper) -> Result<Hyper, SettingsError> {
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
        let field = |field: &'static str| move |message| SettingsError { field, message };
        if let Some(s) = &self.staleness {
            h.staleness = parse_staleness(s).map_err(field("staleness"))?;
        }
        if let Some(c) = &self.codec_up {
            h.codec_up = parse_codec(c).map_err(field("codec_up"))?;
        }
        if let Some(c) = &self.codec_down {
            h.codec_down = parse_codec(c).map_err(field("codec_down"))?;
        }
        if let Some(m) = &self.strategy {
            h.merge = parse_strategy(m).map_err(field("strategy"))?;
            if let Merge::Adacomm { k0, .. } = h.merge {
                h.local_steps = k0;
            }
        }
        h.validate().map_err(|field| SettingsError {
            field,
            message: format!(
                "{field} is out of range (alpha in [0, 1], local_steps and batch at least 1, \
                 lr finite and >= 0, momentum in [0, 1), staleness exponents >= 0, \
                 strategy parameters at least 1 and adacomm's k_min <= k0)"
            ),
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

/// A room's training and merging settings as the dashboard shows them and a settings
/// change takes them back: one field per [`SCHEMA`] key, in the grammars above.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HyperView {
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
}

impl HyperView {
    pub fn of(h: &Hyper) -> HyperView {
        HyperView {
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
        }
    }
}

/// An `f32` as the shortest decimal that reads back to it (0.05, not 0.05000000074505806), so
/// a form shows what the teacher typed.
pub fn short_f32<S: serde::Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    match x.to_string().parse::<f64>() {
        Ok(v) if v.is_finite() => s.serialize_f64(v),
        _ => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_range_settings_say_what_to_fix() {
        let h = Hyper::default();
        let bad = |c: SettingsChange| c.apply(h).unwrap_err();
        assert!(
            bad(SettingsChange {
                alpha: Some(1.5),
                ..Default::default()
            })
            .field
                == "alpha"
        );
        assert!(
            bad(SettingsChange {
                codec_down: Some("zip".into()),
                ..Default::default()
            })
            .message
            .contains("fp16")
        );
        assert!(
            bad(SettingsChange {
                staleness: Some("exp:-1".into()),
                ..Default::default()
            })
            .message
            .contains("exp:A")
        );
    }

    #[test]
    fn the_schema_the_view_and_a_change_name_the_same_settings() {
        let h = Hyper::default();
        let view = serde_json::to_value(HyperView::of(&h)).unwrap();
        let view = view.as_object().unwrap();
        let keys: Vec<&str> = SCHEMA.iter().map(|s| s.key).collect();
        assert_eq!(
            view.keys().map(String::as_str).collect::<Vec<_>>().len(),
            keys.len()
        );
        for key in keys {
            // The view shows it, and a change made of what the view shows leaves it as it was.
            let one = serde_json::json!({ key: view[key] });
            let change: SettingsChange = serde_json::from_value(one).unwrap();
            assert_eq!(change.apply(h), Ok(h), "{key}");
        }
    }

    #[test]
    fn a_full_change_of_some_settings_gives_those_settings_from_any() {
        let target = Hyper {
            alpha: 0.25,
            staleness: Staleness::Hinge { a: 1.0, b: 4 },
            tau_max: 7,
            local_steps: 3,
            lr: 0.02,
            batch: 16,
            momentum: 0.9,
            codec_up: named_codecs(LENET5_28.param_count)[2].1,
            codec_down: Codec::Fp16,
            error_feedback: true,
            merge: Merge::Fedbuff { m: 3 },
        };
        let change = SettingsChange::of(&target);
        assert_eq!(change.apply(Hyper::default()), Ok(target));
        // Through JSON, as `easel rooms apply` sends it.
        let json = serde_json::to_value(&change).unwrap();
        let back: SettingsChange = serde_json::from_value(json).unwrap();
        assert_eq!(back.apply(Hyper::default()), Ok(target));
        // A codec without a name is refused, naming the field.
        let odd = Hyper {
            codec_up: Codec::Qsgd { bits: 3, bucket: 7 },
            ..target
        };
        assert_eq!(
            SettingsChange::of(&odd).apply(target).unwrap_err().field,
            "codec_up"
        );
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
