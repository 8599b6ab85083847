//! Easel messages built and read by hand from PROTOCOL.md, byte by byte, without the
//! protocol crate: if the crate and the page drift apart, these tests notice.

#![allow(dead_code)]

/// The lenet5-28 layout hash, copied from PROTOCOL.md ("Join").
pub const LAYOUT_HASH_HEX: &str =
    "6e0cd5c7e3578939b17f24d213298472b4d3fd8cf4293037c456a0aeb5c3a724";
pub const N: usize = 44_426;

pub const JOIN: u8 = 1;
pub const WELCOME: u8 = 2;
pub const PUSH: u8 = 3;
pub const CENTER: u8 = 4;
pub const ACK: u8 = 5;
pub const CONTROL: u8 = 6;
pub const ERROR: u8 = 7;

pub fn layout_hash() -> [u8; 32] {
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&LAYOUT_HASH_HEX[2 * i..2 * i + 2], 16).unwrap();
    }
    h
}

fn header(ty: u8) -> Vec<u8> {
    let mut m = b"EASL".to_vec();
    m.push(2);
    m.push(ty);
    m
}

/// Join (type 1): room, kind (0 browser, 1 bot, 3 teacher, 4 observer), backend 0 (cpu),
/// capabilities, layout hash, resume flag 0.
pub fn join(room: &str, kind: u8, caps: u32) -> Vec<u8> {
    let mut m = header(JOIN);
    m.extend_from_slice(&(room.len() as u32).to_le_bytes());
    m.extend_from_slice(room.as_bytes());
    m.push(kind);
    m.push(0);
    m.extend_from_slice(&caps.to_le_bytes());
    m.extend_from_slice(&layout_hash());
    m.push(0);
    m
}

/// Join resuming worker `worker` with the resume token of its Welcome: resume flag 1, the id,
/// the token.
pub fn join_resume(room: &str, kind: u8, caps: u32, worker: u64, token: [u8; 16]) -> Vec<u8> {
    let mut m = join(room, kind, caps);
    *m.last_mut().unwrap() = 1;
    m.extend_from_slice(&worker.to_le_bytes());
    m.extend_from_slice(&token);
    m
}

/// An fp32 payload (codec 0): id, length, values.
pub fn fp32(values: &[f32]) -> Vec<u8> {
    let mut p = vec![0u8];
    p.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

/// Push (type 3).
pub fn push(base: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = header(PUSH);
    m.extend_from_slice(&base.to_le_bytes());
    m.extend_from_slice(&16u32.to_le_bytes());
    m.extend_from_slice(&512u32.to_le_bytes());
    m.extend_from_slice(&1.5f32.to_le_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// Control (type 6), action 2 (delay) for the whole room.
pub fn control_delay(ms: u32) -> Vec<u8> {
    let mut m = header(CONTROL);
    m.push(2);
    m.push(0);
    m.extend_from_slice(&ms.to_le_bytes());
    m
}

/// A little-endian cursor; panics (failing the test) on short input.
pub struct Cur<'a> {
    pub b: &'a [u8],
    pub at: usize,
}

impl<'a> Cur<'a> {
    pub fn new(b: &'a [u8]) -> Cur<'a> {
        Cur { b, at: 0 }
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    pub fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().unwrap())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    pub fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    pub fn str(&mut self) -> String {
        let n = self.u32() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
}

/// Checks the header and returns the type byte and a cursor after it.
pub fn open(m: &[u8]) -> (u8, Cur<'_>) {
    assert_eq!(&m[..5], b"EASL\x02", "magic and version");
    let mut c = Cur::new(m);
    c.at = 6;
    (m[5], c)
}

/// Decodes an fp32 payload of `N` values.
pub fn read_fp32(p: &[u8]) -> Vec<f32> {
    let mut c = Cur::new(p);
    assert_eq!(c.u8(), 0, "fp32 codec id");
    assert_eq!(c.u32() as usize, N);
    let v = (0..N).map(|_| c.f32()).collect();
    assert_eq!(c.at, p.len(), "no trailing bytes");
    v
}

fn skip_codec(c: &mut Cur<'_>) {
    match c.u8() {
        0 | 1 => {}
        2 => drop(c.take(5)),
        3 => drop(c.take(4)),
        4 => drop(c.take(9)),
        id => panic!("codec id {id}"),
    }
}

#[derive(Debug)]
pub struct Welcome {
    pub worker: u64,
    pub token: [u8; 16],
    pub alpha: f32,
    pub tau_max: u32,
    pub version: u64,
    pub center: Vec<f32>,
}

/// Reads a Welcome (type 2) whose center is fp32.
pub fn welcome(m: &[u8]) -> Welcome {
    let (ty, mut c) = open(m);
    assert_eq!(ty, WELCOME, "expected Welcome, got {m:?}");
    let worker = c.u64();
    let token: [u8; 16] = c.take(16).try_into().unwrap();
    assert_eq!(c.str(), "lenet5-28");
    assert_eq!(c.take(32), &layout_hash()[..]);
    assert_eq!(c.u32() as usize, N);
    let alpha = c.f32();
    match c.u8() {
        0 | 1 => {}
        2 => drop(c.take(4)),
        3 => drop(c.take(8)),
        s => panic!("staleness {s}"),
    }
    let tau_max = c.u32();
    let _local_steps = c.u32();
    let _lr = c.f32();
    let _batch = c.u32();
    let _momentum = c.f32();
    skip_codec(&mut c);
    skip_codec(&mut c);
    assert!(c.u8() <= 1, "error feedback bool");
    // The strategy and its parameters (PROTOCOL.md, Hyper).
    match c.u8() {
        0 | 2 => {}
        1 | 3 | 5 => drop(c.take(4)),
        4 => drop(c.take(12)),
        6 => drop(c.take(5)),
        s => panic!("strategy {s}"),
    }
    match c.u8() {
        0 => {
            let count = c.u32() as usize;
            c.take(4 * count);
        }
        1 => {
            let scheme = c.str();
            assert!(!scheme.is_empty());
            let _seed = c.u64();
            let shards = c.u32();
            assert!(c.u32() < shards);
        }
        k => panic!("shard kind {k}"),
    }
    let version = c.u64();
    let len = c.u32() as usize;
    let center = read_fp32(c.take(len));
    assert_eq!(c.at, m.len());
    Welcome {
        worker,
        token,
        alpha,
        tau_max,
        version,
        center,
    }
}

#[derive(Debug, PartialEq)]
pub enum Ack {
    Accepted {
        tau: u32,
        alpha_eff: f32,
        version: u64,
    },
    Refused {
        code: u16,
        why: String,
    },
}

/// Reads an Ack (type 5): the base version and the outcome.
pub fn ack(m: &[u8]) -> (u64, Ack) {
    let (ty, mut c) = open(m);
    assert_eq!(ty, ACK, "expected Ack, got type {ty}");
    let base = c.u64();
    let outcome = match c.u8() {
        0 => Ack::Accepted {
            tau: c.u32(),
            alpha_eff: c.f32(),
            version: c.u64(),
        },
        1 => Ack::Refused {
            code: c.u16(),
            why: c.str(),
        },
        o => panic!("outcome {o}"),
    };
    assert_eq!(c.at, m.len());
    (base, outcome)
}

/// Reads a Center (type 4) sent whole and fp32.
pub fn center(m: &[u8]) -> (u64, Vec<f32>) {
    let (ty, mut c) = open(m);
    assert_eq!(ty, CENTER, "expected Center, got type {ty}");
    let version = c.u64();
    assert_eq!(c.u8(), 0, "a whole center, no base");
    let len = c.u32() as usize;
    (version, read_fp32(c.take(len)))
}

/// Reads an Error (type 7): its code.
pub fn error_code(m: &[u8]) -> u16 {
    let (ty, mut c) = open(m);
    assert_eq!(ty, ERROR, "expected Error, got type {ty}");
    let code = c.u16();
    let _why = c.str();
    code
}
