//! Talk-off tests: speech and music must never be taken for digits (test builds only).
//!
//! Three sources, each run through a fresh [`InbandDetector`] file by file:
//! - our own prompts, chimes and hold music from `audio/`, decoded by
//!   [`decode_to_pcm8k`](crate::audio::decode_to_pcm8k) as the server decodes them;
//! - speech made now by espeak-ng: many voices, pitches and speeds, reading digits and
//!   phone numbers (spoken digits are the classic talk-off source), sustained vowels and
//!   running text;
//! - music made now by sox: seeded random chords of three and four notes in several timbres,
//!   arpeggios, sweeps and coloured noise.
//!
//! A missing espeak-ng or sox fails the test with the package to install; it never skips.
//! Each test prints how much audio it ran (`--nocapture`).
//!
//! What is *not* talk-off: two pure sines that happen to lie within tolerance of a row and a
//! column frequency are a DTMF signal by definition (F5 + E6, 698.5 + 1318.5 Hz, is the
//! key 2 within 1.3 %), so the music here uses no bare two-note sine chords.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::testsignal::Rng;
use super::{InbandDetector, InbandDigit, InbandEvent};
use crate::audio::decode_to_pcm8k;

/// Every digit a fresh detector finds in `pcm`.
fn digits(pcm: &[i16]) -> Vec<InbandDigit> {
    let mut det = InbandDetector::new();
    let mut out = Vec::new();
    let mut drain = |det: &mut InbandDetector| {
        while let Some(ev) = det.poll_event() {
            if let InbandEvent::Released(d) = ev {
                out.push(d);
            }
        }
    };
    for frame in pcm.chunks(160) {
        det.handle_samples(frame);
        drain(&mut det);
    }
    det.finish();
    drain(&mut det);
    out
}

/// Audio run and digits found, over many files.
#[derive(Default)]
struct Tally {
    files: usize,
    samples: usize,
    found: Vec<String>,
}

impl Tally {
    fn run(&mut self, name: &str, path: &Path) {
        let pcm = decode_to_pcm8k(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        self.files += 1;
        self.samples += pcm.len();
        for d in digits(&pcm) {
            self.found.push(format!(
                "{name}: '{}' at {} ms for {} ms",
                d.key,
                d.start_ms(),
                d.duration_ms()
            ));
        }
    }

    fn minutes(&self) -> f64 {
        self.samples as f64 / 8000.0 / 60.0
    }

    fn assert_none(&self, what: &str) {
        eprintln!(
            "talk-off, {what}: {} files, {:.1} min, {} digits",
            self.files,
            self.minutes(),
            self.found.len()
        );
        assert!(self.files > 0);
        assert!(
            self.found.is_empty(),
            "{what}: digits detected in speech or music:\n{}",
            self.found.join("\n")
        );
    }
}

/// The path of `program`, or a failure naming the Debian package that provides it.
fn tool(program: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed; the talk-off tests need it: \
                 apt-get install -y {package} (.ci/run installs it)"
            )
        })
}

fn run(mut cmd: Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sox, repeatable (`-R`) and quiet, writing 8 kHz mono 16-bit WAV.
fn sox(args: &[&str], out: &Path, effects: &[&str]) {
    let mut cmd = Command::new(tool("sox", "sox"));
    cmd.args(["-R", "-V1"])
        .args(args)
        .args(["-r", "8000", "-c", "1", "-b", "16"])
        .arg(out)
        .args(effects);
    run(cmd);
}

#[test]
fn our_prompts_chimes_and_hold_music_give_no_digits() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("audio");
    let mut tally = Tally::default();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("audio/ directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| crate::audio::ASSET_EXTENSIONS.iter().any(|x| e == *x))
        })
        .collect();
    entries.sort();
    for path in &entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        tally.run(&name, path);
    }
    // The hold music loops in the lobby: the seam must not make a digit either.
    let music = decode_to_pcm8k(&dir.join("hold_music.flac")).expect("hold music");
    let looped: Vec<i16> = music.iter().chain(&music).chain(&music).copied().collect();
    tally.files += 1;
    tally.samples += looped.len();
    for d in digits(&looped) {
        tally.found.push(format!("hold music x3: {d:?}"));
    }
    tally.assert_none("audio/ prompts, chimes, hold music (looped)");
}

/// What espeak-ng says: digits and numbers first (the classic talk-off), then vowels held
/// long, then running text.
const SCRIPTS: &[&str] = &[
    "zero one two three four five six seven eight nine. oh. star. pound. hash.",
    "nine eight seven six five four three two one zero. seven seven seven. eight eight eight.",
    "My number is 555 867 5309. Call 1 800 555 0199, extension 42. The PIN is 4 7 1 9.",
    "Conference ID 31415926, then pound. Press star 6 to mute, star 1 for help.",
    "Ahhhhhhhhhhhhhhh. Ooooooooooooooh. Eeeeeeeeeeeeeee. Mmmmmmmmmmmmmm. Aaaaaaaaaaah.",
    "Hello? Hello? Can you hear me? I think you're breaking up. Yes, I'm here. \
     Sorry, the line is terrible. Let me call you back in five minutes.",
    "Welcome to pinbridge. Please enter your conference ID, followed by the pound key. \
     If you are the organizer, press star. Otherwise, please wait.",
    "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. \
     Peter Piper picked a peck of pickled peppers. How much wood would a woodchuck chuck.",
    "Good morning everyone, thanks for joining. Let's go through the quarterly numbers: \
     revenue was up twelve percent, costs were down three, and we shipped on time.",
];

/// espeak-ng voices with variants: men, women, children's and odd voices; one robotic,
/// whose monotone holds a pitch steady for long.
const VOICES: &[&str] = &[
    "en-us",
    "en-us+f3",
    "en-us+f5",
    "en-gb+m3",
    "en-gb-scotland+f2",
    "en-029+m7",
    "en-gb-x-rp+klatt3",
    "en-us-nyc+m2",
    "en+grandma",
    "en+croak",
    "en+Tweaky",
    "en+robosoft",
];

#[test]
fn espeak_speech_gives_no_digits() {
    let espeak = tool("espeak-ng", "espeak-ng");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut tally = Tally::default();
    for (v, voice) in VOICES.iter().enumerate() {
        for (s, script) in SCRIPTS.iter().enumerate() {
            // Vary pitch and speed across the grid, deterministically.
            let pitch = [20, 50, 80][(v + s) % 3];
            let speed = [130, 175, 210][(v + 2 * s) % 3];
            let raw = dir.path().join(format!("raw-{v}-{s}.wav"));
            let mut cmd = Command::new(&espeak);
            cmd.args([
                "-v",
                voice,
                "-p",
                &pitch.to_string(),
                "-s",
                &speed.to_string(),
            ])
            .arg("-w")
            .arg(&raw)
            .arg(script);
            run(cmd);
            // Loud, as a close-talking caller is (peak −1 dBFS), through the telephone band.
            let wav = dir.path().join(format!("speech-{v}-{s}.wav"));
            sox(
                &[raw.to_str().expect("UTF-8 temp path")],
                &wav,
                &["highpass", "200", "lowpass", "3400", "norm", "-1"],
            );
            tally.run(
                &format!("{voice} -p {pitch} -s {speed}: {script:.30}"),
                &wav,
            );
        }
    }
    tally.assert_none("espeak-ng speech");
    assert!(tally.minutes() > 5.0, "{} min", tally.minutes());
}

/// Frequency of a MIDI note, Hz.
fn midi_hz(note: u32) -> f64 {
    440.0 * 2f64.powf((f64::from(note) - 69.0) / 12.0)
}

#[test]
fn sox_music_gives_no_digits() {
    const TIMBRES: [&str; 6] = [
        "sine",
        "triangle",
        "sawtooth",
        "square",
        "pluck",
        "trapezium",
    ];
    const CHORDS: [&[u32]; 8] = [
        &[0, 4, 7],      // major
        &[0, 3, 7],      // minor
        &[0, 4, 7, 10],  // dominant seventh
        &[0, 4, 7, 11],  // major seventh
        &[0, 3, 6],      // diminished
        &[0, 5, 7],      // suspended fourth
        &[0, 4, 7, 12],  // major with octave
        &[0, 7, 12, 16], // open voicing
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::new(2024);
    let mut tally = Tally::default();
    let mut n = 0;
    let mut out = |tally: &mut Tally, name: String, synth: Vec<String>, effects: &[&str]| {
        n += 1;
        let wav = dir.path().join(format!("music-{n}.wav"));
        let mut effects_all: Vec<&str> = synth.iter().map(String::as_str).collect();
        effects_all.extend_from_slice(effects);
        sox(&["-n"], &wav, &effects_all);
        tally.run(&name, &wav);
    };

    // Chords: random root from C3 to C6, random shape and timbre, 1.5 s each, at a loud
    // and a moderate level.
    for i in 0..240 {
        let root = 48 + (rng.next_u64() % 37) as u32;
        let shape = CHORDS[(rng.next_u64() % CHORDS.len() as u64) as usize];
        let timbre = TIMBRES[(rng.next_u64() % TIMBRES.len() as u64) as usize];
        let mut synth = vec!["synth".to_string(), "1.5".to_string()];
        for &step in shape {
            synth.push(timbre.to_string());
            synth.push(format!("{:.2}", midi_hz(root + step)));
        }
        let gain = if i % 2 == 0 { "-1" } else { "-20" };
        out(
            &mut tally,
            format!("{timbre} chord {shape:?} on MIDI {root}"),
            synth,
            &["fade", "q", "0.02", "1.5", "0.2", "norm", gain],
        );
    }

    // Arpeggios: 16 plucked, triangle or sine notes at 8 per second, tails overlapping.
    for _ in 0..30 {
        let root = 52 + (rng.next_u64() % 24) as u32;
        let shape = CHORDS[(rng.next_u64() % CHORDS.len() as u64) as usize];
        let timbre = ["pluck", "triangle", "sine"][(rng.next_u64() % 3) as usize];
        let notes: Vec<u32> = (0..16)
            .map(|k| root + shape[k % shape.len()] + 12 * ((k / shape.len()) % 2) as u32)
            .collect();
        // Each note is a channel of its own, 0.6 s long, started 125 ms after the previous
        // one by `delay`; sox mixes the channels to mono.
        let mut synth = vec!["synth".to_string(), "0.6".to_string()];
        for &note in &notes {
            synth.push(timbre.to_string());
            synth.push(format!("{:.2}", midi_hz(note)));
        }
        synth.push("delay".to_string());
        synth.extend((0..notes.len()).map(|k| format!("{:.3}", 0.125 * k as f64)));
        out(
            &mut tally,
            format!("{timbre} arpeggio {shape:?} on MIDI {root}"),
            synth,
            &["norm", "-3"],
        );
    }

    // Sweeps and noise.
    let fixed: &[(&str, &[&str])] = &[
        (
            "sine sweep 200-3400 Hz",
            &["synth", "4", "sine", "200-3400"],
        ),
        (
            "sine sweep 3400-200 Hz",
            &["synth", "4", "sine", "3400-200"],
        ),
        (
            "square sweep 100-2000 Hz",
            &["synth", "4", "square", "100-2000"],
        ),
        (
            "sawtooth sweep 80-1000 Hz",
            &["synth", "4", "sawtooth", "80-1000"],
        ),
        (
            "two sines an octave apart, sweeping",
            &["synth", "4", "sine", "300-1700", "sine", "600-3400"],
        ),
        (
            "three sines sweeping",
            &[
                "synth", "6", "sine", "400-1000", "sine", "500-1250", "sine", "600-1500",
            ],
        ),
        ("white noise", &["synth", "10", "whitenoise"]),
        ("pink noise", &["synth", "10", "pinknoise"]),
        ("brown noise", &["synth", "10", "brownnoise"]),
        (
            "band-passed noise 600-1700 Hz",
            &["synth", "10", "whitenoise", "sinc", "600-1700"],
        ),
        (
            "amplitude-modulated pink noise",
            &["synth", "10", "pinknoise", "tremolo", "4", "80"],
        ),
    ];
    for (name, synth) in fixed {
        out(
            &mut tally,
            name.to_string(),
            synth.iter().map(|s| s.to_string()).collect(),
            &["norm", "-3"],
        );
    }
    tally.assert_none("sox music, sweeps and noise");
    assert!(tally.minutes() > 5.0, "{} min", tally.minutes());
}
