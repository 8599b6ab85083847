//! The strategy family live: a relay on 127.0.0.1 whose room runs FedAvg, FedAvg with
//! backup workers, FedBuff or bounded staleness, three in-process native bots (the first a
//! 3x straggler) training on synthetic digits, and the room's ledger read afterwards.

use std::net::SocketAddr;
use std::sync::Arc;

use easel_bots::{self as bots, BotOptions, BotReport};
use easel_client::data::Split;
use easel_client::model::IMAGE_PIXELS;
use easel_protocol::message::code;
use easel_protocol::{Backend, Merge};
use easel_relay::hub::RoomSlot;
use easel_relay::ledger::Record;
use easel_relay::room::RoomSettings;
use easel_relay::teacher::TeacherControl;
use easel_relay::{Config, Shutdown, run};
use warp::Filter;

const BOTS: usize = 3;
const PUSHES: u64 = 6;

/// Digits with a learnable pattern: label `i % 10`, a bright row at `3 * label`.
fn digits(n: usize) -> Split {
    let mut images = vec![0u8; n * IMAGE_PIXELS];
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    for (i, &l) in labels.iter().enumerate() {
        for x in 0..28 {
            images[i * IMAGE_PIXELS + 3 * usize::from(l) * 28 + x] = 200 + (x as u8 % 50);
        }
    }
    Split::new(images, labels)
}

/// Runs the bots to `PUSHES` pushes each in a room under `merge` (and `tau_max`); returns
/// the bots' reports and the room's ledger records.
async fn session(merge: Merge, tau_max: u32) -> (Vec<BotReport>, Vec<Record>) {
    let mut defaults = RoomSettings::default();
    defaults.hyper.local_steps = 2;
    defaults.hyper.batch = 8;
    defaults.hyper.tau_max = tau_max;
    defaults.hyper.merge = merge;
    session_with(defaults, PUSHES).await
}

/// [`session`] in a room with these settings, `pushes` pushes per bot.
async fn session_with(defaults: RoomSettings, pushes: u64) -> (Vec<BotReport>, Vec<Record>) {
    session_during(defaults, pushes, |_| async {}).await
}

/// [`session_with`], running `during` on the room while the bots train.
async fn session_during<F: std::future::Future<Output = ()>>(
    defaults: RoomSettings,
    pushes: u64,
    during: impl FnOnce(Arc<RoomSlot>) -> F,
) -> (Vec<BotReport>, Vec<Record>) {
    let config = Config {
        https: None,
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_token: Some("strategies".into()),
        room_defaults: defaults,
        ..Config::new(std::sync::Arc::new(easel_client::Lenet))
    };
    let files = warp::path("hello").map(|| "static").boxed();
    let relay = run(config, files, std::future::pending())
        .await
        .expect("relay starts");
    let addr = relay.http.unwrap();
    let room = relay.hub.create_room();
    let (_stop, signal) = Shutdown::new();
    let opts = BotOptions {
        relay: format!("ws://{addr}/ws"),
        room: room.clone(),
        count: BOTS,
        slow: 1,
        slowdown: 3.0,
        backend: Backend::Cpu,
        seed: 3,
        pushes: Some(pushes),
        total_pushes: None,
        trust: None,
    };
    let bots = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        bots::run_bots(opts, Arc::new(digits(300)), signal, None),
    );
    let (reports, ()) = tokio::join!(bots, during(relay.hub.room(&room).unwrap()));
    let reports = reports
        .expect("the bots finish: no push is held for ever")
        .expect("bots run");
    let records = relay
        .hub
        .room(&room)
        .unwrap()
        .with_room(|r| r.ledger().records().cloned().collect());
    (reports, records)
}

/// Every bot had all its pushes answered.
fn all_answered(reports: &[BotReport]) {
    for r in reports {
        assert!(r.error.is_none(), "{}", r.line());
        assert_eq!(r.acks, PUSHES, "{}", r.line());
    }
}

/// The accepted records between two applications, each group ending with the record that
/// made a version.
fn rounds(records: &[Record]) -> Vec<Vec<&Record>> {
    let mut out = vec![];
    let mut round = vec![];
    for r in records.iter().filter(|r| r.accepted()) {
        round.push(r);
        if r.version.is_some() {
            out.push(std::mem::take(&mut round));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedavg_holds_every_push_until_its_round_closes() {
    let (reports, records) = session(Merge::Fedavg { m_of_n: None }, 16).await;
    all_answered(&reports);
    let rounds = rounds(&records);
    assert!(!rounds.is_empty());
    for round in &rounds {
        let version = round.last().unwrap().version.unwrap();
        // One version per round, every push of it from the version before, one per worker.
        let mut workers: Vec<u64> = round.iter().map(|r| r.worker).collect();
        workers.sort_unstable();
        workers.dedup();
        assert_eq!(workers.len(), round.len(), "one push per worker and round");
        assert!(round.iter().all(|r| r.base == version - 1 && r.tau == 0));
        assert!(round[..round.len() - 1].iter().all(|r| r.version.is_none()));
        assert!(round.len() <= BOTS);
    }
    // Once all three are in, a round waits for all three, the straggler included.
    assert_eq!(rounds.last().unwrap().len(), BOTS, "{rounds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedavg_with_backup_workers_closes_after_the_fastest_two() {
    let (reports, records) = session(Merge::Fedavg { m_of_n: Some(2) }, 16).await;
    all_answered(&reports);
    let rounds = rounds(&records);
    // Never more than two; one only while a single worker is in the room (joining, or the
    // fast two done).
    assert!(rounds.iter().all(|r| r.len() <= 2), "{rounds:?}");
    assert!(
        rounds.iter().filter(|r| r.len() == 2).count() >= 3,
        "{rounds:?}"
    );
    // The straggler's late pushes are refused and it resynchronises.
    let slow = reports[0].worker_id;
    assert!(
        records
            .iter()
            .any(|r| r.worker == slow && r.code == code::TOO_STALE),
        "the straggler is late at least once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedbuff_makes_a_version_every_m_pushes() {
    let (reports, records) = session(Merge::Fedbuff { m: 4 }, 16).await;
    all_answered(&reports);
    let accepted = records.iter().filter(|r| r.accepted()).count();
    let rounds = rounds(&records);
    assert_eq!(rounds.len(), accepted / 4);
    for (i, round) in rounds.iter().enumerate() {
        assert_eq!(round.len(), 4);
        assert_eq!(round.last().unwrap().version, Some(i as u64 + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_staleness_never_applies_an_update_staler_than_s() {
    let s = 1;
    let (reports, records) = session(Merge::Bounded { b: None }, s).await;
    all_answered(&reports);
    assert!(
        records
            .iter()
            .filter(|r| r.accepted())
            .all(|r| r.tau <= u64::from(s))
    );
    assert!(
        records
            .iter()
            .all(|r| r.accepted() || r.code == code::TOO_STALE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_averages_every_push_with_a_neighbour_that_catches_up_at_its_next_push() {
    let topology = easel_protocol::strategy::Topology::Ring;
    let (reports, records) = session(Merge::Swarm { topology }, 16).await;
    all_answered(&reports);
    let ids: Vec<u64> = reports.iter().map(|r| r.worker_id).collect();
    // Each bot pushes from the model it last got back: nothing is refused.
    assert!(records.iter().all(|r| r.accepted()), "{records:?}");
    let mut missed = std::collections::HashMap::<u64, u64>::new();
    let mut exchanges = 0;
    for r in &records {
        // A push's staleness is the averages its neighbours made with its model since it
        // last got it back: they reach it under this push (non-blocking).
        assert_eq!(r.tau, missed.insert(r.worker, 0).unwrap_or(0), "{r:?}");
        assert_eq!(r.alpha_eff, if r.peer.is_some() { 0.5 } else { 1.0 });
        if let Some(p) = r.peer {
            assert!(p != r.worker && ids.contains(&p), "{r:?}");
            *missed.entry(p).or_default() += 1;
            exchanges += 1;
        }
    }
    assert!(exchanges > 0, "the bots averaged with each other");
    assert!(
        records.iter().any(|r| r.tau > 0),
        "some averages were caught up later"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adacomm_shortens_the_bots_period_as_the_loss_falls() {
    // k0 = 8 steps; a new period after every round (interval 1 ms) from sqrt(F / F0).
    let adacomm = Merge::Adacomm {
        k0: 8,
        k_min: 1,
        interval_s: 0.001,
    };
    let mut settings = RoomSettings::default();
    settings.hyper.batch = 8;
    settings.hyper.lr = 0.3;
    settings.hyper.merge = adacomm;
    let (reports, records) = session_with(settings, 12).await;
    assert!(reports.iter().all(|r| r.error.is_none() && r.acks == 12));
    let first = records.first().expect("pushes").local_steps;
    assert_eq!(first, 8, "every bot starts at k0");
    // The bots got the relay's Settings and pushed after fewer local steps later on.
    let last = records.iter().map(|r| r.local_steps).min().unwrap();
    assert!(
        last < 8,
        "the period never fell: {:?}",
        records.iter().map(|r| r.local_steps).collect::<Vec<_>>()
    );
    // Every round still closes with one version.
    assert!(!rounds(&records).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_with_quantized_exchanges_stays_in_step() {
    // Pushes and the models sent back both in 8-bit QSGD: the relay keeps what each bot
    // decodes as its copy, so every push still lands on the model the bot holds.
    let qsgd = easel_protocol::Codec::Qsgd {
        bits: 8,
        bucket: 512,
    };
    let mut settings = RoomSettings::default();
    settings.hyper.local_steps = 2;
    settings.hyper.batch = 8;
    settings.hyper.codec_up = qsgd;
    settings.hyper.codec_down = qsgd;
    settings.hyper.merge = Merge::Swarm {
        topology: easel_protocol::strategy::Topology::Complete,
    };
    let (reports, records) = session_with(settings, PUSHES).await;
    all_answered(&reports);
    assert!(records.iter().all(|r| r.accepted()), "{records:?}");
    assert!(records.iter().any(|r| r.peer.is_some()));
    // About a quarter of fp32's 177,734 bytes each way.
    let fp32 = easel_protocol::encoded_len(easel_protocol::Codec::Fp32, 44_426) as u64;
    for r in &records {
        assert!(
            r.bytes_in < fp32 / 3 && r.bytes_out < fp32 / 3,
            "{} in, {} out",
            r.bytes_in,
            r.bytes_out
        );
        assert!(r.delta_norm.is_finite() && r.delta_norm < 10.0, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_rejoin_as_themselves_for_a_new_shard_when_the_partition_changes() {
    let mut settings = RoomSettings::default();
    settings.hyper.local_steps = 16;
    settings.hyper.batch = 8;
    let changed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let at = changed.clone();
    let (reports, records) = session_during(settings, 40, |slot| async move {
        while slot.with_room(|r| r.ledger().totals().pushes) < 6 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        at.store(
            easel_relay::room::wall_ms(),
            std::sync::atomic::Ordering::SeqCst,
        );
        let scheme = "classes:2".to_string();
        slot.teacher_control(&TeacherControl::Partition { scheme })
            .expect("a valid partition");
    })
    .await;
    let changed = changed.load(std::sync::atomic::Ordering::SeqCst);
    for r in &reports {
        // Closed with 4001, each bot joined again as itself and went on to its 40 pushes
        // (a push in flight at the close is lost, so it may have one Ack less).
        assert!(r.error.is_none(), "{}", r.line());
        assert!(
            r.stats.pushes >= 40 && r.acks + 1 >= r.stats.pushes,
            "{}",
            r.line()
        );
        assert!(
            records
                .iter()
                .any(|x| x.worker == r.worker_id && x.wall_ms > changed),
            "bot {} pushed after the change",
            r.worker_id
        );
    }
    let ids: std::collections::BTreeSet<u64> = records.iter().map(|r| r.worker).collect();
    assert_eq!(ids.len(), BOTS, "no bot came back as a new worker");
}
