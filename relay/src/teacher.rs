//! The teacher's JSON API types: the control commands of `POST /api/rooms/CODE/control` and
//! the settings as the dashboard shows them. The settings' names, grammars and checks are
//! `easel_protocol::settings`'s. Pure: parsing and validation only; [`crate::hub::RoomSlot::teacher_control`] applies
//! them. PROTOCOL.md, "Teacher API", documents every field.

use easel_protocol::settings::{HyperView, SettingsChange};
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

/// One command of `POST /api/rooms/CODE/lesson`, tagged by `action` ([`crate::lesson`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum LessonAction {
    /// Asks the lesson `preset` (a key of `GET /api/lessons`): the vote opens. `seconds`
    /// is each run's limit, `target` the accuracy a run stops at.
    Ask {
        preset: String,
        seconds: Option<u32>,
        target: Option<f64>,
    },
    /// Closes the vote and starts the runs.
    Run,
    /// Ends the lesson; the room's settings from before it come back.
    End,
}

/// Reads the `backend` of a [`TeacherControl::Backend`], or says what to write.
pub fn parse_backend_choice(text: &str) -> Result<easel_protocol::BackendChoice, String> {
    easel_protocol::BackendChoice::parse(text)
        .ok_or_else(|| format!("backend {text:?} is not one of auto, gpu or cpu"))
}

/// A room's settings as the dashboard shows and sends them back: the training and merging
/// settings ([`HyperView`], the vocabulary's) and the room's own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettingsView {
    #[serde(flatten)]
    pub hyper: HyperView,
    /// `iid`, `dirichlet:ALPHA` or `classes:K`.
    pub partition: String,
    pub partition_seed: u64,
    pub shards: u32,
    #[serde(serialize_with = "easel_protocol::settings::short_f32")]
    pub max_norm: f32,
    pub init_seed: u64,
}

impl SettingsView {
    pub fn of(s: &RoomSettings) -> SettingsView {
        SettingsView {
            hyper: HyperView::of(&s.hyper),
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

/// `GET /api/settings` (and the dashboard's snapshot): every setting of
/// [`easel_protocol::settings::SCHEMA`], the codec names, and a new room's settings.
pub fn schema_json() -> serde_json::Value {
    serde_json::json!({
        "settings": easel_protocol::settings::SCHEMA,
        "codecs": easel_protocol::settings::codec_names(),
        "defaults": SettingsView::of(&RoomSettings::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(easel_protocol::settings::codec_name(h.codec_up), "qsgd8");
        assert!(
            serde_json::from_str::<TeacherControl>(r#"{"type":"settings","alpah":1}"#).is_err()
        );
        assert!(serde_json::from_str::<TeacherControl>(r#"{"type":"explode"}"#).is_err());
        assert!(serde_json::from_str::<TeacherControl>(r#"{"type":"remove"}"#).is_err());
    }

    #[test]
    fn the_schema_names_every_setting_a_change_takes_and_the_view_shows() {
        let v = schema_json();
        let keys: Vec<&str> = v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap())
            .collect();
        let defaults = v["defaults"].as_object().unwrap();
        for key in &keys {
            assert!(
                defaults.contains_key(*key),
                "{key} is not in the settings view"
            );
            // Each key is a field of a settings change: its default value is accepted.
            let change = serde_json::json!({ "type": "settings", *key: defaults[*key] });
            let parsed: TeacherControl = serde_json::from_value(change).unwrap();
            let TeacherControl::Settings(c) = parsed else {
                panic!("{parsed:?}")
            };
            assert_eq!(
                c.apply(RoomSettings::default().hyper),
                Ok(RoomSettings::default().hyper)
            );
        }
        assert!(keys.len() >= 11, "{keys:?}");
        assert!(v["codecs"].as_array().unwrap().len() >= 7);
    }

    #[test]
    fn settings_show_the_decimals_the_teacher_typed() {
        let v = SettingsView::of(&RoomSettings::default()).to_json();
        assert_eq!(v["lr"].to_string(), "0.05");
        assert_eq!(v["alpha"].to_string(), "0.5");
        assert_eq!(v["staleness"], "inverse");
    }
}
