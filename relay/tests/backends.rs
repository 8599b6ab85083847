//! A tab's backend on the relay's side, through the hub as the sockets use it: its Device
//! report reaches the device row (overriding its Join's backend), the teacher's backend
//! choice reaches that tab's connection and comes back after a resume, and bad choices are
//! refused with what to fix.

use easel_protocol::message::{self, Join};
use easel_protocol::{
    Backend, BackendChoice, ChosenBy, ClientKind, DeviceReport, LENET5_28, Limits, Message, Resume,
};
use easel_relay::hub::Hub;
use easel_relay::room::RoomSettings;
use easel_relay::teacher::TeacherControl;

fn join(room: &str, kind: ClientKind, resume: Option<Resume>) -> Join {
    Join {
        room: room.into(),
        kind,
        backend: Backend::Gpu,
        capabilities: 0,
        layout_hash: LENET5_28.layout_hash(),
        resume_worker: resume,
    }
}

fn choose(device: u64, backend: &str) -> TeacherControl {
    TeacherControl::Backend {
        device,
        backend: backend.into(),
    }
}

#[test]
fn a_tabs_report_and_the_teachers_choice_reach_the_row_and_the_tab() {
    let hub = Hub::new(
        "tok".into(),
        Limits::default(),
        RoomSettings::default(),
        std::sync::Arc::new(easel_client::Lenet),
    );
    let code = hub.create_room();
    let tab = hub
        .join(&join(&code, ClientKind::Browser, None), false)
        .unwrap();
    let bot = hub
        .join(&join(&code, ClientKind::Bot, None), false)
        .unwrap();
    let room = tab.room.clone();
    let row = |state: &serde_json::Value| {
        state["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == tab.worker_id)
            .cloned()
            .unwrap()
    };

    let before = row(&room.state_json());
    assert_eq!(
        before["backend"], "gpu",
        "the Join's backend until a report"
    );
    assert!(before["backend_report"].is_null() && before["backend_choice"].is_null());

    let why = "GPU 480 digits/s, CPU 9,600 digits/s: training on the CPU, 20x faster.";
    room.device_report(
        tab.worker_id,
        DeviceReport {
            backend: Backend::Cpu,
            chosen_by: ChosenBy::Measured,
            gpu_samples_per_s: 480.0,
            cpu_samples_per_s: 9_600.0,
            software_gpu: true,
            adapter: "google swiftshader".into(),
            why: why.into(),
        },
    );
    let r = row(&room.state_json());
    assert_eq!(r["backend"], "cpu");
    assert_eq!(r["backend_report"]["chosen_by"], "measured");
    assert_eq!(r["backend_report"]["gpu_samples_per_s"], 480.0);
    assert_eq!(r["backend_report"]["cpu_samples_per_s"], 9_600.0);
    assert_eq!(r["backend_report"]["software_gpu"], true);
    assert_eq!(r["backend_report"]["why"], why);

    let state = room.teacher_control(&choose(tab.worker_id, "GPU")).unwrap();
    assert_eq!(row(&state)["backend_choice"], "gpu");
    assert_eq!(tab.pending.take_backend(), Some(BackendChoice::Gpu));
    assert_eq!(tab.pending.take_backend(), None, "sent once");
    assert!(bot.pending.take_backend().is_none(), "only that tab hears");

    for (bad, fix) in [
        (choose(tab.worker_id, "tpu"), "not one of auto, gpu or cpu"),
        (choose(bot.worker_id, "cpu"), "not a browser tab"),
        (choose(999, "cpu"), "no device 999"),
    ] {
        let e = room.teacher_control(&bad).unwrap_err();
        assert!(e.contains(fix), "{e}");
    }
    assert_eq!(
        row(&room.state_json())["backend_choice"],
        "gpu",
        "unchanged"
    );

    // The tab reloads: its Welcome is followed by the teacher's choice.
    room.leave(tab.worker_id, tab.connection);
    let resume = Resume {
        worker: tab.worker_id,
        token: tab.resume_token,
    };
    let again = hub
        .join(&join(&code, ClientKind::Browser, Some(resume)), false)
        .unwrap();
    assert_eq!(again.worker_id, tab.worker_id);
    let restored: Vec<Message> = again
        .restore
        .iter()
        .map(|b| message::decode(b, hub.limits()).unwrap())
        .collect();
    assert_eq!(restored, [Message::UseBackend(BackendChoice::Gpu)]);
}
