//! Which backend each browser tab trains on and why, as the tab reports it (the `Device`
//! message: the speeds it measured on WebGPU and on the CPU, and the sentence its page
//! shows), and the backend the teacher chose for it (`UseBackend`), for the dashboard's
//! device rows. Pure: [`crate::hub::RoomSlot`] holds one per room and does the locking.

use std::collections::BTreeMap;

use easel_protocol::{Backend, BackendChoice, ChosenBy, DeviceReport};
use serde::Serialize;

/// The reports and choices of one room, by worker id.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    /// Each tab's latest report; a tab that reconnects sends it again after its Welcome.
    reports: BTreeMap<u64, DeviceReport>,
    /// What the teacher chose per tab, kept across reconnections (a reloaded tab is told
    /// again after its Welcome).
    chosen: BTreeMap<u64, BackendChoice>,
}

impl Backends {
    /// Keeps `worker`'s latest report.
    pub fn report(&mut self, worker: u64, report: DeviceReport) {
        self.reports.insert(worker, report);
    }

    /// Records the teacher's choice for `worker`.
    pub fn choose(&mut self, worker: u64, choice: BackendChoice) {
        self.chosen.insert(worker, choice);
    }

    /// The teacher's choice for `worker`, if any.
    pub fn chosen(&self, worker: u64) -> Option<BackendChoice> {
        self.chosen.get(&worker).copied()
    }

    /// The backend `worker` reported last, if it reported one.
    pub fn backend(&self, worker: u64) -> Option<Backend> {
        self.reports.get(&worker).map(|r| r.backend)
    }

    /// `worker`'s report as the dashboard shows it.
    pub fn view(&self, worker: u64) -> Option<BackendView> {
        self.reports.get(&worker).map(BackendView::of)
    }
}

/// A tab's report in the device row (PROTOCOL.md, "Device row": `backend_report`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendView {
    /// `measured` (auto: both timed), `only_cpu` (auto without a usable GPU), `page`
    /// (`?backend=` in its address) or `teacher`.
    pub chosen_by: &'static str,
    /// Training samples per second measured on each backend; `null` when not measured.
    pub gpu_samples_per_s: Option<f32>,
    pub cpu_samples_per_s: Option<f32>,
    /// The tab's WebGPU adapter is a software one (the CPU emulating a GPU).
    pub software_gpu: bool,
    /// The WebGPU adapter's description; empty without one.
    pub adapter: String,
    /// The sentence the student's page shows.
    pub why: String,
}

impl BackendView {
    fn of(r: &DeviceReport) -> BackendView {
        let measured = |v: f32| (v > 0.0).then_some(v);
        BackendView {
            chosen_by: match r.chosen_by {
                ChosenBy::Measured => "measured",
                ChosenBy::OnlyCpu => "only_cpu",
                ChosenBy::Page => "page",
                ChosenBy::Teacher => "teacher",
            },
            gpu_samples_per_s: measured(r.gpu_samples_per_s),
            cpu_samples_per_s: measured(r.cpu_samples_per_s),
            software_gpu: r.software_gpu,
            adapter: r.adapter.clone(),
            why: r.why.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_report_wins_and_unmeasured_speeds_are_null() {
        let mut b = Backends::default();
        let report = |backend, gpu: f32| DeviceReport {
            backend,
            chosen_by: ChosenBy::Measured,
            gpu_samples_per_s: gpu,
            cpu_samples_per_s: 9_600.0,
            software_gpu: true,
            adapter: "google swiftshader".into(),
            why: "GPU 480 digits/s, CPU 9,600 digits/s: training on the CPU".into(),
        };
        assert_eq!(b.view(3), None);
        b.report(3, report(Backend::Gpu, 0.0));
        b.report(3, report(Backend::Cpu, 480.0));
        let v = b.view(3).expect("a view");
        assert_eq!(b.backend(3), Some(Backend::Cpu));
        assert_eq!(
            (v.chosen_by, v.gpu_samples_per_s, v.cpu_samples_per_s),
            ("measured", Some(480.0), Some(9_600.0))
        );
        b.report(4, report(Backend::Cpu, 0.0));
        assert_eq!(b.view(4).and_then(|v| v.gpu_samples_per_s), None);
        b.choose(3, BackendChoice::Gpu);
        assert_eq!(b.chosen(3), Some(BackendChoice::Gpu));
        assert_eq!(b.chosen(4), None);
    }
}
