//! The live room and the simulator run the same strategy code: one scripted sequence of
//! joins, pushes (fresh, stale, refused, NaN, too large, held at a barrier), leaves and
//! strategy switches, for every strategy, goes through the relay's [`Room`] and through the
//! simulator's [`SimRelay`], and every answer (who, accepted or not, staleness, weight,
//! version, the model sent back) and every center after each step agree bit for bit.

use std::time::{Duration, Instant};

use easel_client::model;
use easel_protocol::codec::{self, Codec};
use easel_protocol::message::{self, Join, Message, Push};
use easel_protocol::strategy::{Reply, Topology};
use easel_protocol::{Ack, Backend, ClientKind, Control, Hyper, LENET5_28, Limits, Merge, Outcome};
use easel_relay::room::{Room, RoomSettings};
use easel_sim::{Delivery, SimRelay};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const WORKERS: u32 = 4;

/// One answer, as either side gives it: worker (the simulator's numbering), accepted,
/// staleness and weight (accepted only), the version and the model sent back.
#[derive(Debug, PartialEq)]
struct Seen {
    worker: u32,
    accepted: bool,
    tau: Option<u32>,
    weight_bits: Option<u32>,
    version: u64,
    /// FNV-1a over the model's bits: equal exactly when the bits are (short to print).
    model: u64,
}

fn bits(v: &[f32]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x0100_0000_01b3)
    })
}

fn from_sim(d: &Delivery) -> Seen {
    Seen {
        worker: d.worker,
        accepted: d.reply == Reply::Accepted,
        tau: d.answer.map(|a| a.tau),
        weight_bits: d.answer.map(|a| a.weight.to_bits()),
        version: d.version,
        model: bits(&d.center),
    }
}

/// The room's answer to worker `id`: its Ack, then the Center that follows it.
fn from_room(room: &mut Room, id: u64, ack: &Ack) -> Seen {
    let center = room.reply_center(id, 0);
    let Ok(Message::Center(c)) = message::decode(&center, &Limits::default()) else {
        panic!("a Center follows every Ack");
    };
    let model = codec::decode(&c.payload, LENET5_28.param_count).expect("an fp32 center");
    let (accepted, tau, weight) = match ack.outcome {
        Outcome::Accepted { tau, alpha_eff, .. } => (true, Some(tau), Some(alpha_eff.to_bits())),
        Outcome::Refused { .. } => (false, None, None),
    };
    Seen {
        worker: (id - 1) as u32,
        accepted,
        tau,
        weight_bits: weight,
        version: c.version,
        model: bits(&model),
    }
}

fn hyper(merge: Merge) -> Hyper {
    Hyper {
        tau_max: 3,
        local_steps: 2,
        codec_up: Codec::Fp32,
        codec_down: Codec::Fp32,
        merge,
        ..RoomSettings::default().hyper
    }
}

/// What happens next in a script.
#[derive(Clone, Debug)]
enum Step {
    /// Worker `w` pushes from the version it holds minus `back`, with values of kind `bad`
    /// (0: a small update, 1: NaN, 2: far above the norm limit) at `at_us`.
    Push {
        w: u32,
        back: u64,
        bad: u8,
        at_us: u64,
    },
    Leave {
        w: u32,
    },
    Switch {
        merge: Merge,
    },
}

/// A seeded script: mostly pushes, a few of them stale or bad, a leave, and switches to
/// `then` and back.
fn script(seed: u64, first: Merge, then: Merge) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut at_us = 0;
    let mut left = None;
    for i in 0..90 {
        at_us += rng.random_range(1_000..400_000u64);
        if i == 30 {
            steps.push(Step::Switch { merge: then });
        } else if i == 55 {
            steps.push(Step::Switch { merge: first });
        } else if i == 70 {
            let w = rng.random_range(0..WORKERS);
            left = Some(w);
            steps.push(Step::Leave { w });
        } else {
            let mut w = rng.random_range(0..WORKERS);
            if Some(w) == left {
                w = (w + 1) % WORKERS;
            }
            let roll = rng.random_range(0..20u32);
            steps.push(Step::Push {
                w,
                back: if roll < 4 { u64::from(roll) + 1 } else { 0 },
                bad: match roll {
                    18 => 1,
                    19 => 2,
                    _ => 0,
                },
                at_us,
            });
        }
    }
    steps
}

/// Runs `steps` through a room and a simulated relay, both starting under `first`, and
/// checks that they agree after every step. Returns how many answers were accepted,
/// refused, and given to another worker than the pusher (a barrier's held pushes), so the
/// caller can check the script exercised them.
fn run(first: Merge, steps: &[Step]) -> (usize, usize, usize) {
    let settings = RoomSettings {
        hyper: hyper(first),
        ..RoomSettings::default()
    };
    let center = model::init_params(settings.init_seed);
    let started = Instant::now();
    let mut room = Room::new("PARTY".into(), settings.clone(), center.clone(), started);
    let join = Join {
        room: "PARTY".into(),
        kind: ClientKind::Bot,
        backend: Backend::Cpu,
        capabilities: 0,
        layout_hash: LENET5_28.layout_hash(),
        resume_worker: None,
    };
    let mut views = Vec::new();
    for w in 0..WORKERS {
        let welcome = room.join(&join, false, started).expect("joins");
        assert_eq!(welcome.worker_id, u64::from(w) + 1);
        views.push(welcome.center_version);
    }
    let mut sim = SimRelay::new(
        settings.hyper.strategy(),
        WORKERS,
        center.into(),
        settings.max_norm,
        Codec::Fp32,
        ChaCha8Rng::seed_from_u64(settings.init_seed ^ 0x5eed),
    )
    .expect("a valid strategy");
    let mut data = ChaCha8Rng::seed_from_u64(99);
    let mut current = first;
    let (mut accepted, mut refused, mut others) = (0, 0, 0);
    for (i, step) in steps.iter().enumerate() {
        let (from_room_side, from_sim_side): (Vec<Seen>, Vec<Seen>) = match *step {
            Step::Push {
                w,
                back,
                bad,
                at_us,
            } => {
                let delta: Vec<f32> = (0..LENET5_28.param_count)
                    .map(|_| match bad {
                        1 => f32::NAN,
                        2 => 1e6,
                        _ => data.random_range(-0.01f32..0.01),
                    })
                    .collect();
                let payload = codec::encode(Codec::Fp32, &delta, &mut data);
                let base = views[w as usize].saturating_sub(back);
                let loss = if i % 7 == 3 {
                    f32::NAN
                } else {
                    2.0 / (1.0 + i as f32)
                };
                let push = Push {
                    base_version: base,
                    local_steps: 2,
                    samples: 32,
                    loss,
                    payload: payload.clone(),
                };
                let now = started + Duration::from_micros(at_us);
                let pushed = room.handle_push(u64::from(w) + 1, &push, 100, now);
                let mut r = Vec::new();
                for (id, ack) in &pushed.released {
                    r.push(from_room(&mut room, *id, ack));
                }
                if let Some(ack) = &pushed.ack {
                    r.push(from_room(&mut room, u64::from(w) + 1, ack));
                }
                (
                    r,
                    sim.arrive(w, base, &payload, loss, at_us)
                        .iter()
                        .map(from_sim)
                        .collect(),
                )
            }
            Step::Leave { w } => {
                room.leave(u64::from(w) + 1);
                let released = room.release_held(7, "a worker left");
                let r = released
                    .iter()
                    .map(|(id, ack)| from_room(&mut room, *id, ack))
                    .collect();
                (r, sim.leave(w).iter().map(from_sim).collect())
            }
            Step::Switch { merge } => {
                current = merge;
                room.control(&Control::Settings(hyper(merge)))
                    .expect("valid settings");
                let released = room.release_held(7, "switched");
                let r = released
                    .iter()
                    .map(|(id, ack)| from_room(&mut room, *id, ack))
                    .collect();
                let strategy = room.settings().hyper.strategy();
                let d = sim.switch(strategy, Codec::Fp32).expect("valid strategy");
                (r, d.iter().map(from_sim).collect())
            }
        };
        assert_eq!(
            from_room_side, from_sim_side,
            "step {i} ({step:?}) under {current:?}"
        );
        for s in &from_room_side {
            if matches!(*step, Step::Push { w, .. } if w != s.worker) {
                others += 1;
            }
            views[s.worker as usize] = s.version;
            if s.accepted {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        let (rv, rc) = room.center();
        let (sv, sc) = sim.engine().center();
        assert_eq!(rv, sv, "version after step {i}");
        assert_eq!(bits(&rc), bits(sc), "center after step {i}");
        if let Some(k) = sim.engine().period() {
            assert_eq!(room.settings().hyper.local_steps, k, "ADACOMM's period");
        }
    }
    (accepted, refused, others)
}

#[test]
fn the_room_and_the_simulator_agree_bit_for_bit_under_every_strategy() {
    let ring = Topology::Ring;
    let strategies = [
        (Merge::Easgd, Merge::Swarm { topology: ring }),
        (Merge::Fedavg { m_of_n: None }, Merge::Easgd),
        (Merge::Fedavg { m_of_n: Some(2) }, Merge::AsyncSgd),
        (Merge::AsyncSgd, Merge::Fedbuff { m: 2 }),
        (
            Merge::Bounded { b: Some(0.05) },
            Merge::Fedavg { m_of_n: None },
        ),
        (
            Merge::Adacomm {
                k0: 8,
                k_min: 2,
                interval_s: 0.5,
            },
            Merge::Bounded { b: None },
        ),
        (Merge::Fedbuff { m: 3 }, Merge::Swarm { topology: ring }),
        (
            Merge::Swarm {
                topology: Topology::Complete,
            },
            Merge::Adacomm {
                k0: 4,
                k_min: 1,
                interval_s: 0.2,
            },
        ),
    ];
    for (i, (first, then)) in strategies.into_iter().enumerate() {
        let (accepted, refused, others) = run(first, &script(i as u64, first, then));
        eprintln!(
            "{first:?} then {then:?}: {accepted} accepted, {refused} refused, {others} released"
        );
        assert!(
            accepted > 20 && refused > 3,
            "{first:?}: {accepted} accepted, {refused} refused"
        );
        let barrier = [first, then]
            .iter()
            .any(|m| matches!(m, Merge::Fedavg { .. } | Merge::Adacomm { .. }));
        assert_eq!(
            barrier,
            others > 0,
            "{first:?} then {then:?}: {others} released"
        );
    }
}
