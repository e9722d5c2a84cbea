//! DTMF digits in an audio file: the logic of `pinbridge dtmf detect FILE`.
//!
//! [`detect_file`] decodes any file [`decode_to_pcm8k`] reads (WAV, FLAC, Ogg, MP3…, any
//! rate and channel count, brought to 8 kHz mono), runs the in-band
//! [`InbandDetector`] over it in 20 ms frames as a call would, and returns each key press
//! with its start and duration in milliseconds. A [`DetectedDigit`] serialises to the
//! `--json` form, `{"digit": "5", "start_ms": 120, "duration_ms": 80}`.
//!
//! Decoding reads the whole file into memory (minutes of 8 kHz audio are a few MB); this is
//! a diagnostic, never on the media path.

use std::path::Path;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::Key;
use super::goertzel::{InbandDetector, InbandEvent};
use crate::audio::{AudioError, decode_to_pcm8k};
use crate::media::FRAME_SAMPLES;

/// One key press found in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectedDigit {
    pub key: Key,
    /// Start of the tone from the start of the file, ms.
    pub start_ms: u64,
    /// Length of the tone, ms.
    pub duration_ms: u64,
}

impl Serialize for DetectedDigit {
    /// `{"digit": "5", "start_ms": 120, "duration_ms": 80}`: the key as the one-character
    /// string printed on the keypad.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("DetectedDigit", 3)?;
        s.serialize_field("digit", &self.key.as_char())?;
        s.serialize_field("start_ms", &self.start_ms)?;
        s.serialize_field("duration_ms", &self.duration_ms)?;
        s.end()
    }
}

/// Decodes `path` and returns the DTMF digits in it, in order. The error names the file and
/// says why it could not be read (missing, unreadable, not audio, corrupt).
pub fn detect_file(path: &Path) -> Result<Vec<DetectedDigit>, AudioError> {
    Ok(detect_pcm(&decode_to_pcm8k(path)?))
}

/// The DTMF digits in 8 kHz mono PCM, in order.
pub fn detect_pcm(pcm: &[i16]) -> Vec<DetectedDigit> {
    let mut detector = InbandDetector::new();
    let mut digits = Vec::new();
    let mut drain = |detector: &mut InbandDetector| {
        while let Some(event) = detector.poll_event() {
            if let InbandEvent::Released(d) = event {
                digits.push(DetectedDigit {
                    key: d.key,
                    start_ms: d.start_ms(),
                    duration_ms: d.duration_ms(),
                });
            }
        }
    };
    for frame in pcm.chunks(FRAME_SAMPLES) {
        detector.handle_samples(frame);
        drain(&mut detector);
    }
    detector.finish();
    drain(&mut detector);
    digits
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;
    use crate::media::dtmf::goertzel::{COL_HZ, ROW_HZ, key_tones};

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
                    "{program} is not installed; this test needs it: apt-get install -y \
                     {package} (.ci/run installs it)"
                )
            })
    }

    fn run(program: &str, package: &str, args: &[&str]) {
        let out = Command::new(tool(program, package))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path_str(p: &Path) -> &str {
        p.to_str().expect("UTF-8 temp path")
    }

    /// Writes `keys` as DTMF with sox at `rate` Hz and `channels` channels: `lead_ms` of
    /// silence, then each key `tone_ms` long with `pause_ms` between, then `pause_ms`.
    /// Each tone −10 dBFS or so. Returns the expected start of each key, ms.
    fn sox_digits(
        out: &Path,
        keys: &str,
        rate: u32,
        channels: u32,
        (lead_ms, tone_ms, pause_ms): (u64, u64, u64),
    ) -> Vec<u64> {
        let dir = out.parent().expect("temp dir");
        let fmt = [
            "-r",
            &rate.to_string(),
            "-c",
            &channels.to_string(),
            "-b",
            "16",
        ]
        .map(String::from);
        let seg = |name: &str| dir.join(format!("{name}.wav"));
        let silence = |name: &str, ms: u64| {
            let p = seg(name);
            let mut args: Vec<String> = vec!["-V1".into(), "-n".into()];
            args.extend(fmt.iter().cloned());
            args.push(path_str(&p).into());
            args.extend([
                "trim".into(),
                "0".into(),
                format!("{:.3}", ms as f64 / 1000.0),
            ]);
            run(
                "sox",
                "sox",
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            p
        };
        let mut parts = vec![silence("lead", lead_ms)];
        let pause = silence("pause", pause_ms);
        let mut starts = Vec::new();
        for (i, c) in keys.chars().enumerate() {
            let key = Key::from_char(c).expect("a keypad character");
            let (r, col) = key_tones(key);
            let p = seg(&format!("key{i}"));
            let mut args: Vec<String> = vec!["-V1".into(), "-n".into()];
            args.extend(fmt.iter().cloned());
            args.push(path_str(&p).into());
            args.extend(
                [
                    "synth",
                    &format!("{:.3}", tone_ms as f64 / 1000.0),
                    "sine",
                    &ROW_HZ[r].to_string(),
                    "sine",
                    &COL_HZ[col].to_string(),
                    "gain",
                    "-6",
                ]
                .map(String::from),
            );
            run(
                "sox",
                "sox",
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            starts.push(lead_ms + i as u64 * (tone_ms + pause_ms));
            parts.push(p);
            parts.push(pause.clone());
        }
        let mut args: Vec<&str> = vec!["-V1"];
        args.extend(parts.iter().map(|p| path_str(p)));
        args.push(path_str(out));
        run("sox", "sox", &args);
        starts
    }

    fn assert_digits(got: &[DetectedDigit], keys: &str, starts: &[u64], tone_ms: u64) {
        let text: String = got.iter().map(|d| d.key.as_char()).collect();
        assert_eq!(text, keys, "{got:?}");
        for (d, &start) in got.iter().zip(starts) {
            assert!(
                d.start_ms.abs_diff(start) <= 4,
                "{d:?}, want start {start} ms"
            );
            assert!(
                d.duration_ms.abs_diff(tone_ms) <= 5,
                "{d:?}, want {tone_ms} ms"
            );
        }
    }

    #[test]
    fn every_key_from_a_sox_wav_at_8_khz() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("digits.wav");
        let keys = "0123456789*#ABCD";
        let starts = sox_digits(&wav, keys, 8000, 1, (200, 80, 80));
        assert_digits(&detect_file(&wav).unwrap(), keys, &starts, 80);
    }

    #[test]
    fn a_stereo_44k1_wav_is_resampled_first() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("digits.wav");
        let keys = "31415926#";
        let starts = sox_digits(&wav, keys, 44100, 2, (120, 60, 50));
        assert_digits(&detect_file(&wav).unwrap(), keys, &starts, 60);
    }

    #[test]
    fn espeak_speech_has_no_digits_and_digits_after_it_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let speech = dir.path().join("speech.wav");
        run(
            "espeak-ng",
            "espeak-ng",
            &[
                "-v",
                "en-us",
                "-w",
                path_str(&speech),
                "Please enter your PIN: four seven one nine, then pound.",
            ],
        );
        assert_eq!(detect_file(&speech).unwrap(), vec![]);

        // The same speech, then the digits it read out, in one file (espeak-ng writes
        // 22050 Hz mono, so the tones are made to match for sox to join them).
        let tones = dir.path().join("tones.wav");
        let keys = "4719#";
        let starts = sox_digits(&tones, keys, 22050, 1, (100, 70, 70));
        let both = dir.path().join("both.wav");
        run(
            "sox",
            "sox",
            &["-V1", path_str(&speech), path_str(&tones), path_str(&both)],
        );
        let speech_ms = decode_to_pcm8k(&speech).unwrap().len() as u64 / 8;
        let starts: Vec<u64> = starts.iter().map(|s| s + speech_ms).collect();
        assert_digits(&detect_file(&both).unwrap(), keys, &starts, 70);
    }

    #[test]
    fn unreadable_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.wav");
        let err = detect_file(&missing).unwrap_err();
        assert!(matches!(err, AudioError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.wav"), "{err}");

        let garbage = dir.path().join("garbage.wav");
        std::fs::write(&garbage, b"this is not a sound file at all").unwrap();
        let err = detect_file(&garbage).unwrap_err();
        assert!(err.to_string().contains("garbage.wav"), "{err}");
    }

    #[test]
    fn json_form() {
        let d = DetectedDigit {
            key: Key::Pound,
            start_ms: 120,
            duration_ms: 80,
        };
        // serde_json is not a dependency; toml's serializer shows the field names and
        // values the JSON printer will get.
        let text = toml::to_string(&d).unwrap();
        assert_eq!(text, "digit = \"#\"\nstart_ms = 120\nduration_ms = 80\n");
    }

    #[test]
    fn silence_and_empty_input_have_no_digits() {
        assert_eq!(detect_pcm(&[]), vec![]);
        assert_eq!(detect_pcm(&[0; 8000]), vec![]);
    }
}
