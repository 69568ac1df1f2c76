//! Envelope layer versus the bare primitives it calls, measured in the same run.
//!
//! ```sh
//! cargo bench -p crabnet-core --bench envelope
//! ```
//!
//! Two parts, both in this one binary (see `BENCHMARKS.md` for results and how to read them):
//!
//! 1. Criterion groups (`sign_verify`, `send`, `receive`, `components`): the envelope path and
//!    the primitives path of every case side by side, with criterion's statistics.
//! 2. A paired table of ratios (envelope / primitives), printed at the end as Markdown. Each
//!    case runs its envelope path and its primitives path alternately in short batches, so
//!    both see the same machine load; the ratio is the median of the per-round ratios. This is
//!    the number to quote on a shared, noisy machine.
//!
//! Both parts measure the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time: on a shared machine a wall clock also counts the time other processes hold the core,
//! which inflates long operations more than short ones (a 10 ms seal to 64 recipients is
//! preempted in nearly every run, a 100 µs one rarely). For this single-threaded code, CPU time
//! equals wall time on an idle machine. `CRABNET_BENCH_CLOCK=wall` switches to the wall clock.
//!
//! `CRABNET_BENCH=criterion` runs only part 1, `CRABNET_BENCH=ratios` only part 2. Under
//! `cargo test --benches` (no `--bench` argument) criterion runs each case once and the ratio
//! table is skipped.
//!
//! What is compared (byte counts are identical on both sides):
//!
//! The signature side of the primitives path is the floor: `crypto::RawSignatures`, the bare
//! dalek Ed25519 and libcrux ML-DSA-44 calls with keys expanded (and the Ed25519 framing
//! prepared) before the clock starts. Nothing on that side derives a key.
//!
//! - **sign+verify** (plain payload): envelope = `message_envelope` (CBOR-encodes the body,
//!   writes the header, signs) then `parse` + `Parsed::verify` + `Parsed::message` (decodes the
//!   body); primitives = raw sign + raw verify of the same bytes the envelope signs.
//! - **send** (sealed to N recipients): envelope = `message_envelope`; primitives =
//!   `crypto::seal` of the same payload and aad + raw sign of as many bytes as the envelope
//!   signs.
//! - **receive** (as the last recipient): envelope = `parse` + `Parsed::verify` +
//!   `Parsed::message`; primitives = raw verify of the same signed bytes + `crypto::open` of an
//!   already decoded `Sealed` (its ML-KEM-768 key is expanded once, in `KemSecret`).
//! - **verify floor**: raw verify alone, the per-core ceiling of envelopes verified per second.
//! - **components**: ChaCha20-Poly1305 of the payload, one ML-KEM-768 encapsulation, one X25519
//!   agreement, and `crypto::seal` alone at 1, 8 and 64 recipients (its slope is the cost of
//!   one key wrap).

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use crabnet_core::crypto::{
    self, KemPublic, KemSecret, KemSeeds, RawSignature, RawSignatures, Sealed, SigningPublic,
    SigningSeeds,
};
use crabnet_core::envelope::{self, HEADER_LEN, MAX_ENVELOPE_BYTES, SIGNATURE_CONTEXT};
use crabnet_core::identity::Identity;
use crabnet_core::model::{
    Body, Message, MessageId, NodeId, SeedId, Settlement, SettlementOutcome,
};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};

/// Payload sizes (bytes of the CBOR-encoded body).
const SIZES: [usize; 2] = [256, 16 * 1024];
/// Recipient counts.
const RECIPIENTS: [usize; 3] = [1, 8, 64];
/// Bytes of the envelope header that `seal` authenticates as aad.
const AAD_LEN: usize = 74;
const TTL: u32 = 60;

fn os_rng(buf: &mut [u8]) {
    envelope::os_rng(buf);
}

fn random32() -> [u8; 32] {
    let mut out = [0u8; 32];
    os_rng(&mut out);
    out
}

/// A node: its identity (for sending) or just its decryption keys (for receiving).
struct Recipient {
    id: NodeId,
    raw_id: [u8; 32],
    kem: KemSecret,
    public: KemPublic,
}

fn recipient(i: usize) -> Recipient {
    let raw_id = [i as u8 ^ 0xa5; 32];
    let kem = KemSecret::from_seeds(&KemSeeds {
        x25519: [i as u8; 32],
        ml_kem: [i as u8 ^ 0x3c; 64],
    });
    Recipient {
        id: NodeId::from_bytes(raw_id),
        raw_id,
        public: kem.public(),
        kem,
    }
}

const SENDER_SEEDS: SigningSeeds = SigningSeeds {
    ed25519: [1; 32],
    ml_dsa: [2; 32],
};

fn sender() -> Identity {
    Identity::from_seeds(
        &SENDER_SEEDS,
        &KemSeeds {
            x25519: [3; 32],
            ml_kem: [4; 64],
        },
        1,
    )
}

/// A domain message whose CBOR body is exactly `size` bytes (the length prefixes of CBOR
/// strings and integers grow in steps, so some sizes need a different `amount`).
fn message(sender: &NodeId, size: usize) -> Message {
    for amount in [1, 100, 1000] {
        for note_len in size.saturating_sub(200)..=size {
            let body = Body::SeedSettled(Settlement {
                seed_id: SeedId::from_bytes([9; 16]),
                outcome: SettlementOutcome::Accepted,
                amount,
                note: "n".repeat(note_len),
                paid: Vec::new(),
            });
            if envelope::encode_body(&body).len() == size {
                return Message {
                    id: MessageId::from_bytes([7; 16]),
                    sender: sender.clone(),
                    lamport: 1,
                    timestamp: 1_700_000_000_000,
                    body,
                };
            }
        }
    }
    panic!("no message encodes to exactly {size} bytes");
}

/// Everything one case needs, built once outside the timed code.
struct Case {
    size: usize,
    n: usize,
    identity: Identity,
    signing_public: SigningPublic,
    message: Message,
    payload: Vec<u8>,
    recipients: Vec<Recipient>,
    /// A valid envelope of this case.
    envelope: Vec<u8>,
    /// `envelope` minus its signatures: what both sides sign and verify.
    signed_len: usize,
    /// The floor: raw library calls over `envelope[..signed_len]`, keys expanded.
    raw: RawSignatures,
    /// A raw signature of those bytes.
    raw_signature: RawSignature,
    /// The payload sealed to the same recipients with the envelope's aad (for `open`).
    sealed: Option<Sealed>,
}

impl Case {
    fn new(size: usize, n: usize) -> Self {
        let identity = sender();
        let message = message(identity.node_id(), size);
        let payload = envelope::encode_body(&message.body);
        let recipients: Vec<Recipient> = (0..n).map(recipient).collect();
        let raw = RawSignatures::new(&SENDER_SEEDS, b"", SIGNATURE_CONTEXT).expect("keys");
        let raw_signature = raw.sign(random32()).expect("signs");
        let mut case = Case {
            size,
            n,
            signing_public: identity.public().signing.clone(),
            identity,
            message,
            payload,
            recipients,
            envelope: Vec::new(),
            signed_len: 0,
            raw,
            raw_signature,
            sealed: None,
        };
        case.envelope = case.envelope_send();
        case.signed_len = case.envelope.len() - crypto::DUAL_SIGNATURE_LEN;
        case.raw = RawSignatures::new(
            &SENDER_SEEDS,
            &case.envelope[..case.signed_len],
            SIGNATURE_CONTEXT,
        )
        .expect("keys");
        case.raw_signature = case.raw.sign(random32()).expect("signs");
        assert_eq!(case.signed_len, HEADER_LEN + case.sealed_len());
        if n > 0 {
            case.sealed = Some(case.seal());
        }
        // Both paths must work (and agree) before anything is timed.
        assert_eq!(case.envelope_receive(), case.message);
        case.primitives_receive();
        case
    }

    /// Length of the envelope payload field (the payload, or its sealed encoding).
    fn sealed_len(&self) -> usize {
        if self.n == 0 {
            self.payload.len()
        } else {
            crypto::NONCE_LEN
                + crypto::X25519_PUBLIC_KEY_LEN
                + 2
                + self.n * envelope::RECIPIENT_ENTRY_LEN
                + self.payload.len()
                + crypto::AEAD_TAG_LEN
        }
    }

    fn label(&self) -> String {
        if self.n == 0 {
            format!("{}", Size(self.size))
        } else {
            format!("N={} {}", self.n, Size(self.size))
        }
    }

    fn me(&self) -> &Recipient {
        self.recipients
            .last()
            .expect("a sealed case has recipients")
    }

    fn aad(&self) -> &[u8] {
        &self.envelope[..AAD_LEN]
    }

    // ----- envelope path ----------------------------------------------------------------------

    fn envelope_send(&self) -> Vec<u8> {
        let list: Vec<(&NodeId, &KemPublic)> =
            self.recipients.iter().map(|r| (&r.id, &r.public)).collect();
        envelope::message_envelope(
            &self.identity,
            &self.message,
            TTL,
            &list,
            MAX_ENVELOPE_BYTES,
            &mut os_rng,
        )
        .expect("envelope builds")
    }

    fn envelope_receive(&self) -> Message {
        let parsed = envelope::parse(&self.envelope, MAX_ENVELOPE_BYTES).expect("parses");
        parsed.verify(&self.signing_public).expect("verifies");
        if self.n == 0 {
            parsed.message(self.identity.node_id(), self.identity.kem())
        } else {
            parsed.message(&self.me().id, &self.me().kem)
        }
        .expect("decodes")
    }

    /// The envelope layer's own receive-side work, without any cryptography: splitting the
    /// envelope and decoding the sealed payload's recipient list.
    fn envelope_decode_only(&self) -> usize {
        let parsed = envelope::parse(&self.envelope, MAX_ENVELOPE_BYTES).expect("parses");
        parsed.recipients().expect("decodes").len()
    }

    // ----- primitives path --------------------------------------------------------------------

    fn seal(&self) -> Sealed {
        let list: Vec<(&[u8], &KemPublic)> = self
            .recipients
            .iter()
            .map(|r| (&r.raw_id[..], &r.public))
            .collect();
        crypto::seal(&self.payload, self.aad(), &list, &mut os_rng).expect("seals")
    }

    /// Raw sign (the floor) of as many bytes as the envelope signs.
    fn sign(&self) -> RawSignature {
        self.raw.sign(random32()).expect("signs")
    }

    fn primitives_send(&self) -> (Option<Sealed>, RawSignature) {
        let sealed = (self.n > 0).then(|| self.seal());
        (sealed, self.sign())
    }

    /// Raw verify (the floor) of the bytes the envelope signs.
    fn verify(&self) {
        assert!(self.raw.verify(&self.raw_signature), "verifies");
    }

    fn primitives_receive(&self) -> Option<Vec<u8>> {
        self.verify();
        self.sealed.as_ref().map(|sealed| {
            crypto::open(sealed, self.aad(), &self.me().raw_id, &self.me().kem).expect("opens")
        })
    }

    /// Plain sign+verify through the raw library calls.
    fn primitives_sign_verify(&self) {
        let signature = self.sign();
        assert!(self.raw.verify(&signature), "verifies");
    }

    /// Plain sign+verify through the envelope layer.
    fn envelope_sign_verify(&self) -> Message {
        let bytes = self.envelope_send();
        let parsed = envelope::parse(&bytes, MAX_ENVELOPE_BYTES).expect("parses");
        parsed.verify(&self.signing_public).expect("verifies");
        parsed
            .message(self.identity.node_id(), self.identity.kem())
            .expect("decodes")
    }
}

struct Size(usize);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >= 1024 && self.0.is_multiple_of(1024) {
            write!(f, "{} KiB", self.0 / 1024)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

/// Bare primitives that are not reachable through `crypto`'s public API.
struct Components {
    aead: ChaCha20Poly1305,
    payloads: Vec<Vec<u8>>,
    ml_kem_public: libcrux_ml_kem::mlkem768::MlKem768PublicKey,
    x25519_secret: x25519_dalek::StaticSecret,
    x25519_public: x25519_dalek::PublicKey,
}

impl Components {
    fn new() -> Self {
        let (_, ml_kem_public) = libcrux_ml_kem::mlkem768::generate_key_pair([5; 64]).into_parts();
        Components {
            aead: ChaCha20Poly1305::new(&[6; 32].into()),
            payloads: SIZES.iter().map(|&n| vec![0x42; n]).collect(),
            ml_kem_public,
            x25519_secret: x25519_dalek::StaticSecret::from([7; 32]),
            x25519_public: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(
                [8; 32],
            )),
        }
    }

    fn aead(&self, i: usize) -> Vec<u8> {
        self.aead
            .encrypt(
                &[0; 12].into(),
                Payload {
                    msg: &self.payloads[i],
                    aad: &[0; AAD_LEN],
                },
            )
            .expect("encrypts")
    }

    fn ml_kem_encapsulate(&self) -> [u8; 32] {
        libcrux_ml_kem::mlkem768::encapsulate(&self.ml_kem_public, random32()).1
    }

    /// ML-KEM-768 key generation from a seed: once per `KemSecret`, no longer per `open`.
    fn ml_kem_keygen(&self) -> libcrux_ml_kem::mlkem768::MlKem768KeyPair {
        libcrux_ml_kem::mlkem768::generate_key_pair([5; 64])
    }

    /// ML-DSA-44 key generation from a seed: once per `SigningSecret`, no longer per `sign`.
    fn ml_dsa_keygen(&self) -> libcrux_ml_dsa::ml_dsa_44::MLDSA44KeyPair {
        libcrux_ml_dsa::ml_dsa_44::generate_key_pair([5; 32])
    }

    fn x25519(&self) -> [u8; 32] {
        self.x25519_secret
            .diffie_hellman(&self.x25519_public)
            .to_bytes()
    }
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// CPU time consumed by the calling thread so far.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Without a thread CPU clock, fall back to the wall clock.
#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn use_wall_clock() -> bool {
    std::env::var("CRABNET_BENCH_CLOCK").is_ok_and(|v| v == "wall")
}

/// A clock reading for the paired runner: thread CPU time, or wall time if asked for.
fn now(wall: bool, origin: Instant) -> Duration {
    if wall {
        origin.elapsed()
    } else {
        thread_cpu_time()
    }
}

/// Criterion measurement: CPU time of the benchmark thread.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NanosFormatter
    }
}

/// Formats nanoseconds like criterion's own (private) duration formatter.
struct NanosFormatter;

impl ValueFormatter for NanosFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical_ns < 1e3 {
            (1.0, "ns")
        } else if typical_ns < 1e6 {
            (1e-3, "µs")
        } else if typical_ns < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        // Per-second rates of whatever the throughput counts (unused by these groups).
        let per_iteration = match *throughput {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n as f64,
            Throughput::Bits(n) => n as f64,
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => n as f64,
        };
        values
            .iter_mut()
            .for_each(|v| *v = per_iteration * 1e9 / *v);
        "units/s"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

// ---------------------------------------------------------------------------------------------
// Part 1: criterion
// ---------------------------------------------------------------------------------------------

fn criterion_groups<M: Measurement>(
    c: &mut Criterion<M>,
    plain: &[Case],
    sealed: &[Case],
    comp: &Components,
) {
    envelope_and_primitives(
        c,
        "sign_verify",
        plain,
        Case::envelope_sign_verify,
        Case::primitives_sign_verify,
    );
    envelope_and_primitives(
        c,
        "send",
        sealed,
        Case::envelope_send,
        Case::primitives_send,
    );
    envelope_and_primitives(
        c,
        "receive",
        sealed,
        Case::envelope_receive,
        Case::primitives_receive,
    );

    let mut g = c.benchmark_group("components");
    for (i, size) in SIZES.iter().enumerate() {
        g.bench_function(BenchmarkId::new("chacha20poly1305", Size(*size)), |b| {
            b.iter(|| black_box(comp.aead(i)))
        });
    }
    g.bench_function("ml_kem_768_encapsulate", |b| {
        b.iter(|| black_box(comp.ml_kem_encapsulate()))
    });
    g.bench_function("x25519_agree", |b| b.iter(|| black_box(comp.x25519())));
    g.bench_function("ml_kem_768_keygen", |b| {
        b.iter(|| black_box(comp.ml_kem_keygen()))
    });
    g.bench_function("ml_dsa_44_keygen", |b| {
        b.iter(|| black_box(comp.ml_dsa_keygen()))
    });
    for case in sealed.iter().filter(|c| c.size == SIZES[0]) {
        g.bench_function(BenchmarkId::new("seal", format!("N={}", case.n)), |b| {
            b.iter(|| black_box(case.seal()))
        });
    }
    g.finish();
}

/// The criterion group `name`: for each case, the operation through the envelope layer
/// (`envelope`) and through the bare primitives (`primitives`), under the case's label.
fn envelope_and_primitives<M: Measurement, T, U>(
    c: &mut Criterion<M>,
    name: &str,
    cases: &[Case],
    envelope: impl Fn(&Case) -> T,
    primitives: impl Fn(&Case) -> U,
) {
    let mut g = c.benchmark_group(name);
    for case in cases {
        let id = case.label();
        g.bench_function(BenchmarkId::new("envelope", &id), |b| {
            b.iter(|| black_box(envelope(case)))
        });
        g.bench_function(BenchmarkId::new("primitives", &id), |b| {
            b.iter(|| black_box(primitives(case)))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Part 2: paired ratios
// ---------------------------------------------------------------------------------------------

/// Time budget of one paired case.
const PAIRED_BUDGET: Duration = Duration::from_millis(1500);
const PAIRED_MIN_ROUNDS: usize = 15;
/// Aim for batches of about this long, so timer overhead does not matter.
const BATCH_TARGET: Duration = Duration::from_millis(2);

/// Per-operation medians (µs) of some closures run round-robin in batches, and the median of
/// the per-round ratio of the first to the second.
struct Paired {
    medians_us: Vec<f64>,
    ratio: f64,
    ratio_low: f64,
    ratio_high: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn paired(ops: &mut [&mut dyn FnMut()]) -> Paired {
    let wall = use_wall_clock();
    let origin = Instant::now();
    // Warm up and size the batches.
    let batch: Vec<u32> = ops
        .iter_mut()
        .map(|op| {
            let start = now(wall, origin);
            let mut runs = 0u32;
            while runs < 3 || now(wall, origin) - start < Duration::from_millis(50) {
                op();
                runs += 1;
            }
            let per = (now(wall, origin) - start) / runs;
            (BATCH_TARGET.as_nanos() / per.as_nanos().max(1)).clamp(1, 10_000) as u32
        })
        .collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
    let start = Instant::now();
    let mut round = 0usize;
    while round < PAIRED_MIN_ROUNDS || start.elapsed() < PAIRED_BUDGET {
        // Alternate the order so neither side always runs right after the other.
        let order: Vec<usize> = if round.is_multiple_of(2) {
            (0..ops.len()).collect()
        } else {
            (0..ops.len()).rev().collect()
        };
        for i in order {
            let t = now(wall, origin);
            for _ in 0..batch[i] {
                ops[i]();
            }
            let spent = now(wall, origin) - t;
            times[i].push(spent.as_secs_f64() * 1e6 / f64::from(batch[i]));
        }
        round += 1;
    }
    let mut ratios: Vec<f64> = times[0].iter().zip(&times[1]).map(|(a, b)| a / b).collect();
    let ratio = median(&mut ratios);
    Paired {
        medians_us: times.iter_mut().map(|t| median(t)).collect(),
        ratio,
        ratio_low: quantile(&ratios, 0.25),
        ratio_high: quantile(&ratios, 0.75),
    }
}

/// `f` as an operation for [`paired`], its result kept from the optimiser.
fn kept<T>(f: impl Fn() -> T) -> impl FnMut() {
    move || {
        black_box(f());
    }
}

/// [`paired`] over three operations on each case, each kept from the optimiser; adds a row
/// `{what} {label}` to `out` per case and returns the results in case order.
fn paired_cases<A, B, C>(
    out: &mut String,
    what: &str,
    cases: &[Case],
    (a, b, c): (
        impl Fn(&Case) -> A,
        impl Fn(&Case) -> B,
        impl Fn(&Case) -> C,
    ),
) -> Vec<Paired> {
    let mut results = Vec::new();
    for case in cases {
        let p = paired(&mut [
            &mut kept(|| a(case)),
            &mut kept(|| b(case)),
            &mut kept(|| c(case)),
        ]);
        *out += &row(&format!("{what} {}", case.label()), &p);
        results.push(p);
    }
    results
}

fn pct(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

fn row(case: &str, p: &Paired) -> String {
    format!(
        "| {case} | {:.1} | {:.1} | {:.3} ({}) | {:.3}..{:.3} |\n",
        p.medians_us[0],
        p.medians_us[1],
        p.ratio,
        pct(p.ratio),
        p.ratio_low,
        p.ratio_high
    )
}

fn ratio_table(plain: &[Case], sealed: &[Case], comp: &Components) {
    let mut out = String::new();
    eprintln!("crabnet paired ratios: running (about a minute)...");

    let mut floor = String::new();
    for case in plain {
        let p = paired(&mut [&mut kept(|| case.envelope_sign_verify()), &mut || {
            case.primitives_sign_verify()
        }]);
        out += &row(&format!("sign+verify {}", case.label()), &p);
        let v = paired(&mut [
            &mut || {
                let parsed = envelope::parse(&case.envelope, MAX_ENVELOPE_BYTES).expect("parses");
                parsed.verify(&case.signing_public).expect("verifies");
            },
            &mut || case.verify(),
        ]);
        out += &row(&format!("verify {}", case.label()), &v);
        floor.push_str(&format!(
            "| {} | {:.1} | {:.0} |\n",
            case.label(),
            v.medians_us[1],
            1e6 / v.medians_us[1]
        ));
    }

    // Send side, with `seal` alone as a third column for the per-recipient slope.
    let send = paired_cases(
        &mut out,
        "send",
        sealed,
        (Case::envelope_send, Case::primitives_send, Case::seal),
    );
    let receive = paired_cases(
        &mut out,
        "receive",
        sealed,
        (
            Case::envelope_receive,
            Case::primitives_receive,
            Case::envelope_decode_only,
        ),
    );
    for ((case, s), r) in sealed.iter().zip(&send).zip(&receive) {
        let env = s.medians_us[0] + r.medians_us[0];
        let bare = s.medians_us[1] + r.medians_us[1];
        out.push_str(&format!(
            "| seal+open {} (send + receive) | {env:.1} | {bare:.1} | {:.3} ({}) | |\n",
            case.label(),
            env / bare,
            pct(env / bare)
        ));
    }

    let comp_times = paired(&mut [
        &mut kept(|| comp.aead(0)),
        &mut kept(|| comp.aead(1)),
        &mut kept(|| comp.ml_kem_encapsulate()),
        &mut kept(|| comp.x25519()),
        &mut kept(|| comp.ml_kem_keygen()),
        &mut kept(|| comp.ml_dsa_keygen()),
    ])
    .medians_us;

    // Where the receive-side overhead goes.
    let mut decode = String::new();
    for (case, r) in sealed.iter().zip(&receive) {
        decode.push_str(&format!(
            "| {} | {:.1} | {:.1} |\n",
            case.label(),
            r.medians_us[0] - r.medians_us[1],
            r.medians_us[2]
        ));
    }

    // Per-recipient slopes, from the send rounds (same size, different N).
    let mut slopes = String::new();
    for &size in &SIZES {
        let at = |n: usize| {
            sealed
                .iter()
                .zip(&send)
                .find(|(c, _)| c.size == size && c.n == n)
                .map(|(_, p)| p)
                .expect("case exists")
        };
        let (n1, n8, n64) = (at(1), at(8), at(64));
        for (column, name) in [(2, "seal"), (1, "seal + sign"), (0, "envelope send")] {
            let t1 = n1.medians_us[column];
            let s8 = (n8.medians_us[column] - t1) / 7.0;
            let s64 = (n64.medians_us[column] - t1) / 63.0;
            slopes.push_str(&format!(
                "| {name} {} | {t1:.1} | {s8:.1} | {s64:.1} | {:.1} |\n",
                Size(size),
                t1 - s64,
            ));
        }
    }

    println!();
    println!("## Envelope / primitives (paired, same run)");
    println!();
    println!("| case | envelope µs | primitives µs | ratio | ratio IQR |");
    println!("|---|---:|---:|---:|---:|");
    print!("{out}");
    println!();
    println!("## Per-recipient cost (µs; slope from N=1 to N=8 and to N=64)");
    println!();
    println!("| path | N=1 | slope 1→8 | slope 1→64 | fixed part (N=1 minus slope) |");
    println!("|---|---:|---:|---:|---:|");
    print!("{slopes}");
    println!();
    println!("## Components (µs, medians)");
    println!();
    println!("| primitive | µs |");
    println!("|---|---:|");
    println!(
        "| ChaCha20-Poly1305 encrypt {} | {:.2} |",
        Size(SIZES[0]),
        comp_times[0]
    );
    println!(
        "| ChaCha20-Poly1305 encrypt {} | {:.2} |",
        Size(SIZES[1]),
        comp_times[1]
    );
    println!("| ML-KEM-768 encapsulate | {:.2} |", comp_times[2]);
    println!("| X25519 agreement | {:.2} |", comp_times[3]);
    println!(
        "| ML-KEM-768 key generation (once per `KemSecret`) | {:.2} |",
        comp_times[4]
    );
    println!(
        "| ML-DSA-44 key generation (once per `SigningSecret`) | {:.2} |",
        comp_times[5]
    );
    println!();
    println!("## Verify floor: raw Ed25519 + ML-DSA-44 verify, keys expanded, one thread");
    println!();
    println!("| signed bytes of | µs | envelopes/s |");
    println!("|---|---:|---:|");
    print!("{floor}");
    println!();
    println!("## Receive: envelope minus primitives, and the envelope's decoding alone (µs)");
    println!();
    println!("| case | envelope − primitives | `parse` + `recipients` |");
    println!("|---|---:|---:|");
    print!("{decode}");
}

/// Criterion settings: short runs, few samples (the whole bench takes a few minutes).
fn settings<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let which = std::env::var("CRABNET_BENCH").unwrap_or_default();
    let plain: Vec<Case> = SIZES.iter().map(|&s| Case::new(s, 0)).collect();
    let sealed: Vec<Case> = RECIPIENTS
        .iter()
        .flat_map(|&n| SIZES.iter().map(move |&s| (s, n)))
        .map(|(s, n)| Case::new(s, n))
        .collect();
    let comp = Components::new();

    if which != "ratios" {
        if use_wall_clock() {
            let mut c = settings(Criterion::default().with_measurement(WallTime));
            criterion_groups(&mut c, &plain, &sealed, &comp);
            c.final_summary();
        } else {
            let mut c = settings(Criterion::default().with_measurement(ThreadCpuTime));
            criterion_groups(&mut c, &plain, &sealed, &comp);
            c.final_summary();
        }
    }
    if bench_mode && which != "criterion" {
        ratio_table(&plain, &sealed, &comp);
    }
}
