//! Reference audio for "did the caller hear the right prompt": the committed asset decoded
//! and resampled to 8 kHz mono by sox — a decoder and resampler independent of the
//! server's (symphonia + its own resampler), so a match proves the audio, not the code path.
//!
//! TODO(integrator): once `pinbridge::audio::decode_to_pcm8k` lands, a test may also compare
//! the server's own decode against this one; keep sox as the independent reference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{run_bounded, which};

/// Extensions a prompt asset may have, in the order we prefer them.
const AUDIO_EXTENSIONS: &[&str] = &["flac", "wav", "ogg", "mp3"];

/// `audio/<stem>.<ext>` in the repository; panics if there is none.
pub fn asset(stem: &str) -> PathBuf {
    let dir = super::repo_root().join("audio");
    for ext in AUDIO_EXTENSIONS {
        let p = dir.join(format!("{stem}.{ext}"));
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "no audio asset {stem}.{{{}}} in {} — the prompt the server plays must be committed there",
        AUDIO_EXTENSIONS.join(","),
        dir.display()
    )
}

/// Decodes `path` to 8 kHz mono 16-bit PCM with sox; panics if sox is missing or fails.
pub fn decode_with_sox(path: &Path) -> Vec<i16> {
    let input = [path.as_os_str().to_str().expect("UTF-8 path")];
    pcm_from_le_bytes(&sox_raw(&input, &[], RawEncoding::Linear16))
}

/// Raw 8 kHz mono output formats for [`sox_raw`].
#[derive(Clone, Copy, Debug)]
pub enum RawEncoding {
    /// Signed 16-bit little-endian.
    Linear16,
    /// G.711 μ-law bytes.
    MuLaw,
    /// G.711 A-law bytes.
    ALaw,
}

/// Runs `sox INPUT… -t raw <encoding> -c 1 -r 8000 OUT EFFECTS…` and returns OUT's bytes.
/// `input` is a file or `["-n"]` for a synthesised signal; panics if sox is missing or
/// fails.
pub fn sox_raw(input: &[&str], effects: &[&str], encoding: RawEncoding) -> Vec<u8> {
    let sox = which("sox").unwrap_or_else(|| {
        panic!(
            "sox is not on PATH; the audio tests need it: apt-get install -y sox \
             (.ci/run installs it)"
        )
    });
    let dir = tempfile::tempdir().expect("temp dir for sox output");
    let raw = dir.path().join("out.raw");
    let format: &[&str] = match encoding {
        RawEncoding::Linear16 => &["-e", "signed-integer", "-b", "16", "-L"],
        RawEncoding::MuLaw => &["-e", "mu-law", "-b", "8"],
        RawEncoding::ALaw => &["-e", "a-law", "-b", "8"],
    };
    let mut cmd = Command::new(sox);
    // -D: no dither. sox dithers when it lowers the bit depth, with fresh noise on every
    // run, which made two encodings of the same signal disagree by a step now and then.
    cmd.arg("-V1")
        .arg("-D")
        .args(input)
        .args(["-t", "raw"])
        .args(format)
        .args(["-c", "1", "-r", "8000"])
        .arg(&raw)
        .args(effects);
    let out = run_bounded("sox", cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "sox {input:?} {effects:?} failed: {}\n{}",
        out.status,
        out.stderr
    );
    std::fs::read(&raw).expect("reading sox output")
}

/// Little-endian 16-bit samples from bytes.
pub fn pcm_from_le_bytes(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The greeting every caller hears first, as 8 kHz PCM.
pub fn greeting_pcm8k() -> Vec<i16> {
    decode_with_sox(&asset("greeting"))
}
