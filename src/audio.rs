//! Sound files in, 8 kHz mono PCM out: the boundary to symphonia (decoding) and rubato
//! (resampling), and the set of sounds the product plays.
//!
//! [`decode_to_pcm8k`] turns any file symphonia reads (WAV, FLAC, Ogg/Vorbis, MP3, …) at any
//! sample rate and channel count into the narrowband signal everything else works on: the
//! channels are averaged to mono, an FFT resampler with a windowed-sinc anti-aliasing filter
//! brings it to [`SAMPLE_RATE`], and samples are rounded to `i16` with clipping. No other
//! module names symphonia or rubato (STYLE §4), so replacing either touches this file only.
//!
//! [`Sound`] names every prompt, tone and the hold music; [`Assets::load`] decodes each from
//! the `audio/` directory once at start and G.711-encodes it into a shared
//! [`Clip`](crate::media::player::Clip). Decoding and resampling allocate and take tens of
//! milliseconds per file, so this runs on a blocking thread before calls are accepted, never
//! on the media tick; a missing or corrupt file is an [`AudioError`] naming the file, which
//! `main` reports as a start-up failure.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use thiserror::Error;

use crate::media::SAMPLE_RATE;
use crate::media::player::{Clip, PlayMode};

/// File extensions [`Assets::load`] accepts for a sound, in order of preference.
pub const ASSET_EXTENSIONS: [&str; 3] = ["flac", "wav", "ogg"];

/// Why a sound file could not be turned into 8 kHz PCM. Every variant names the file, and its
/// message is complete on its own (the underlying cause is part of the text).
#[derive(Debug, Error)]
pub enum AudioError {
    #[error("audio file {}: not found", .path.display())]
    NotFound { path: PathBuf },

    #[error("audio file {}: cannot read: {cause}", .path.display())]
    Io { path: PathBuf, cause: io::Error },

    #[error("audio file {}: unsupported or unrecognised format: {reason}", .path.display())]
    UnsupportedFormat { path: PathBuf, reason: String },

    #[error("audio file {}: contains no audio track", .path.display())]
    NoAudioTrack { path: PathBuf },

    #[error("audio file {}: cannot decode (corrupt?): {cause}", .path.display())]
    Decode {
        path: PathBuf,
        cause: SymphoniaError,
    },

    #[error("audio file {}: decodes to no samples", .path.display())]
    Empty { path: PathBuf },

    #[error("audio file {}: cannot resample from {rate} Hz: {reason}", .path.display())]
    Resample {
        path: PathBuf,
        rate: u32,
        reason: String,
    },

    #[error("sound directory {}: not found or not a directory", .dir.display())]
    AssetDir { dir: PathBuf },

    #[error(
        "sound {sound:?} missing: none of {sound}.flac, {sound}.wav, {sound}.ogg in {}",
        .dir.display()
    )]
    MissingAsset { sound: Sound, dir: PathBuf },
}

/// Every sound pinbridge plays. The file for a sound is `<stem>.{flac,wav,ogg}` in the sound
/// directory; `audio/README.md` gives each one's text and `audio/generate.sh` makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sound {
    /// "Welcome to pinbridge."
    Greeting,
    /// "Please enter your conference ID, followed by the pound key."
    EnterConferenceId,
    /// "Sorry, that conference ID was not recognized."
    ConferenceIdUnknown,
    /// "If you are the organizer, press star. Otherwise, please wait."
    OrganizerOrWait,
    /// "Please enter your pin, followed by the pound key."
    EnterPin,
    /// "Sorry, that pin is not correct."
    PinIncorrect,
    /// "Pin entry is not available right now." (PIN entry locked out for this conference.)
    PinUnavailable,
    /// "Please continue to wait. The meeting will start when the organizer joins."
    WaitingForOrganizer,
    /// "The meeting is starting."
    MeetingStarting,
    /// "You are now in the meeting."
    JoinedMeeting,
    /// "You are muted."
    Muted,
    /// "You are unmuted."
    Unmuted,
    /// "To mute or unmute, press star six. To hear this again, press star one."
    Help,
    /// "Sorry, this meeting is full."
    MeetingFull,
    /// "Goodbye."
    Goodbye,
    /// Rising two-note chime (D5 → A5, 0.4 s) when someone joins the meeting.
    JoinTone,
    /// Falling two-note chime (A5 → D5, 0.4 s) when someone leaves the meeting.
    LeaveTone,
    /// 32 s of music for the lobby, made to loop seamlessly.
    HoldMusic,
}

impl Sound {
    /// Every sound, in declaration order (`Sound::ALL[s as usize] == s`).
    pub const ALL: [Sound; 18] = [
        Sound::Greeting,
        Sound::EnterConferenceId,
        Sound::ConferenceIdUnknown,
        Sound::OrganizerOrWait,
        Sound::EnterPin,
        Sound::PinIncorrect,
        Sound::PinUnavailable,
        Sound::WaitingForOrganizer,
        Sound::MeetingStarting,
        Sound::JoinedMeeting,
        Sound::Muted,
        Sound::Unmuted,
        Sound::Help,
        Sound::MeetingFull,
        Sound::Goodbye,
        Sound::JoinTone,
        Sound::LeaveTone,
        Sound::HoldMusic,
    ];

    /// The file name without extension, also the [`Clip`] name.
    pub const fn stem(self) -> &'static str {
        match self {
            Sound::Greeting => "greeting",
            Sound::EnterConferenceId => "enter_conference_id",
            Sound::ConferenceIdUnknown => "conference_id_unknown",
            Sound::OrganizerOrWait => "organizer_or_wait",
            Sound::EnterPin => "enter_pin",
            Sound::PinIncorrect => "pin_incorrect",
            Sound::PinUnavailable => "pin_unavailable",
            Sound::WaitingForOrganizer => "waiting_for_organizer",
            Sound::MeetingStarting => "meeting_starting",
            Sound::JoinedMeeting => "joined_meeting",
            Sound::Muted => "muted",
            Sound::Unmuted => "unmuted",
            Sound::Help => "help",
            Sound::MeetingFull => "meeting_full",
            Sound::Goodbye => "goodbye",
            Sound::JoinTone => "join_tone",
            Sound::LeaveTone => "leave_tone",
            Sound::HoldMusic => "hold_music",
        }
    }

    /// How the sound is meant to be played: hold music loops, everything else plays once.
    pub const fn play_mode(self) -> PlayMode {
        match self {
            Sound::HoldMusic => PlayMode::Loop,
            _ => PlayMode::Once,
        }
    }
}

impl fmt::Display for Sound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.stem())
    }
}

/// Every [`Sound`], decoded, resampled and G.711-encoded, ready to share between calls.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Indexed by `Sound as usize`.
    clips: Vec<Arc<Clip>>,
}

impl Assets {
    /// Loads every [`Sound`] from `dir`, taking `<stem>.flac`, else `.wav`, else `.ogg`.
    ///
    /// Blocking and allocating (it decodes every file): call it once at start, from a
    /// blocking context. Fails on the first sound that is missing, unreadable or corrupt.
    pub fn load(dir: &Path) -> Result<Assets, AudioError> {
        if !dir.is_dir() {
            return Err(AudioError::AssetDir { dir: dir.into() });
        }
        let mut clips = Vec::with_capacity(Sound::ALL.len());
        for sound in Sound::ALL {
            let path = ASSET_EXTENSIONS
                .iter()
                .map(|ext| dir.join(format!("{}.{ext}", sound.stem())))
                .find(|p| p.is_file())
                .ok_or_else(|| AudioError::MissingAsset {
                    sound,
                    dir: dir.into(),
                })?;
            let pcm = decode_to_pcm8k(&path)?;
            tracing::debug!(
                sound = sound.stem(),
                path = %path.display(),
                samples = pcm.len(),
                "loaded sound"
            );
            clips.push(Arc::new(Clip::from_pcm(sound.stem(), pcm)));
        }
        Ok(Assets { clips })
    }

    /// The clip for `sound`; clone the `Arc` to give a call its own
    /// [`Playback`](crate::media::player::Playback).
    pub fn clip(&self, sound: Sound) -> &Arc<Clip> {
        &self.clips[sound as usize]
    }
}

/// Decodes the first audio track of `path` to 8 kHz mono 16-bit PCM.
///
/// Channels are averaged; any sample rate is converted with an anti-aliasing resampler
/// (content above 4 kHz is removed, not folded back); samples outside full scale clip.
/// A malformed packet is an error rather than a silent gap, and so is a FLAC file whose
/// decoded audio fails its MD5 check. A file that ends in the middle of a packet (a truncated
/// WAV, or one written by a recorder that never fixed up its length) yields what was decoded
/// before the end, with a warning. Only the first logical stream of a chained Ogg file is read.
pub fn decode_to_pcm8k(path: &Path) -> Result<Vec<i16>, AudioError> {
    let (mono, rate) = decode_mono(path)?;
    if mono.is_empty() {
        return Err(AudioError::Empty { path: path.into() });
    }
    let resampled = resample(&mono, rate, SAMPLE_RATE).map_err(|reason| AudioError::Resample {
        path: path.into(),
        rate,
        reason,
    })?;
    Ok(resampled.iter().map(|&s| to_i16(s)).collect())
}

/// Decodes the default audio track to mono `f32` (full scale ±1.0) at its own sample rate.
fn decode_mono(path: &Path) -> Result<(Vec<f32>, u32), AudioError> {
    let file = File::open(path).map_err(|cause| match cause.kind() {
        io::ErrorKind::NotFound => AudioError::NotFound { path: path.into() },
        _ => AudioError::Io {
            path: path.into(),
            cause,
        },
    })?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }

    let decode_err = |cause: SymphoniaError| match cause {
        SymphoniaError::Unsupported(what) => AudioError::UnsupportedFormat {
            path: path.into(),
            reason: what.to_string(),
        },
        cause => AudioError::Decode {
            path: path.into(),
            cause,
        },
    };

    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(decode_err)?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::NoAudioTrack { path: path.into() })?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::NoAudioTrack { path: path.into() })?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default().verify(true))
        .map_err(decode_err)?;

    let mut mono: Vec<f32> = Vec::new();
    let mut rate = params.sample_rate;
    let mut planes: Vec<Vec<f32>> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::warn!(path = %path.display(), "audio file ends mid-packet; using what decoded");
                break;
            }
            Err(SymphoniaError::ResetRequired) => {
                tracing::warn!(path = %path.display(), "chained stream; reading the first only");
                break;
            }
            Err(cause) => return Err(decode_err(cause)),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = decoder.decode(&packet).map_err(decode_err)?;
        if buf.frames() == 0 {
            continue;
        }
        let buf_rate = buf.spec().rate();
        match rate {
            Some(r) if r != buf_rate && !mono.is_empty() => {
                return Err(AudioError::UnsupportedFormat {
                    path: path.into(),
                    reason: format!("sample rate changes mid-stream ({r} Hz to {buf_rate} Hz)"),
                });
            }
            _ => rate = Some(buf_rate),
        }
        buf.copy_to_vecs_planar::<f32>(&mut planes);
        downmix_into(&planes, &mut mono);
    }
    // FLAC carries an MD5 of its audio. Its demuxer skips damaged frames and a truncated file
    // just ends, so this is where a corrupt or cut FLAC file shows.
    if decoder.finalize().verify_ok == Some(false) {
        return Err(decode_err(SymphoniaError::DecodeError(
            "decoded audio does not match the file's MD5 checksum",
        )));
    }

    match rate {
        Some(rate) if rate > 0 => Ok((mono, rate)),
        _ if mono.is_empty() => Err(AudioError::Empty { path: path.into() }),
        _ => Err(AudioError::UnsupportedFormat {
            path: path.into(),
            reason: "sample rate unknown".into(),
        }),
    }
}

/// Appends the average of `planes` (one slice per channel, equal lengths) to `mono`.
fn downmix_into(planes: &[Vec<f32>], mono: &mut Vec<f32>) {
    let Some(first) = planes.first() else {
        return;
    };
    if planes.len() == 1 {
        mono.extend_from_slice(first);
        return;
    }
    let scale = 1.0 / planes.len() as f32;
    mono.extend((0..first.len()).map(|i| planes.iter().map(|p| p[i]).sum::<f32>() * scale));
}

/// Resamples mono `input` from `from` Hz to `to` Hz, the output aligned with the input
/// (the filter delay is trimmed) and `ceil(len * to / from)` samples long.
///
/// rubato's synchronous FFT resampler works on blocks whose sizes are the two rates divided
/// by their GCD; it low-passes at just under the lower Nyquist frequency with a
/// Blackman-Harris windowed sinc, so downsampling does not alias. The block is sized to about
/// 1/16 s of input so the filter is long enough to be steep (≥ 500 output taps at 8 kHz).
fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    if from == to {
        return Ok(input.to_vec());
    }
    let chunk = (from as usize / 16).max(1);
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Both)
        .map_err(|e| e.to_string())?;
    let adapter = InterleavedSlice::new(input, 1, input.len()).map_err(|e| e.to_string())?;
    let out = resampler
        .process_all(&adapter, input.len(), None)
        .map_err(|e| e.to_string())?;
    Ok(out.take_data())
}

/// Full-scale `f32` (±1.0) to `i16`, rounding and clipping.
fn to_i16(sample: f32) -> i16 {
    // NaN casts to 0; infinities and overshoot saturate.
    (sample * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
mod tests {
    use std::f32::consts::TAU;

    use super::*;

    /// The committed sound directory.
    fn asset_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("audio")
    }

    /// Writes `channels` × `frames` of `f(channel, t_seconds)` as a 16-bit WAV.
    fn write_wav(
        path: &Path,
        rate: u32,
        channels: u16,
        secs: f32,
        f: impl Fn(u16, f32) -> f32,
    ) -> Vec<Vec<f32>> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).expect("create test wav");
        let frames = (rate as f32 * secs) as usize;
        let mut written = vec![Vec::with_capacity(frames); usize::from(channels)];
        for n in 0..frames {
            let t = n as f32 / rate as f32;
            for c in 0..channels {
                let s = to_i16(f(c, t));
                written[usize::from(c)].push(f32::from(s) / 32768.0);
                w.write_sample(s).expect("write sample");
            }
        }
        w.finalize().expect("finalize test wav");
        written
    }

    fn sine(freq: f32, amp: f32) -> impl Fn(u16, f32) -> f32 {
        move |_, t| amp * (TAU * freq * t).sin()
    }

    /// Normalised Goertzel power of `freq` in `x` at 8 kHz: the fraction of the block's
    /// energy at that frequency (≈ 1.0 for a pure tone centred on a bin).
    fn tone_fraction(x: &[i16], freq: f32) -> f32 {
        let n = x.len() as f64;
        let coeff = 2.0 * (std::f64::consts::TAU * f64::from(freq) / f64::from(SAMPLE_RATE)).cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s0 = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        let energy: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
        if energy == 0.0 {
            return 0.0;
        }
        (2.0 * power / (n * energy)) as f32
    }

    fn rms(x: &[i16]) -> f32 {
        (x.iter().map(|&v| f32::from(v).powi(2)).sum::<f32>() / x.len() as f32).sqrt()
    }

    fn peak(x: &[i16]) -> i32 {
        x.iter().map(|&v| i32::from(v).abs()).max().unwrap_or(0)
    }

    /// Sign changes from negative to non-negative: one per period of a clean sine.
    fn rising_zero_crossings(x: &[i16]) -> usize {
        x.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count()
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn stereo_44k1_is_downmixed_and_resampled() {
        let dir = tmp();
        let path = dir.path().join("stereo.wav");
        write_wav(&path, 44_100, 2, 2.0, sine(1000.0, 0.5));
        let pcm = decode_to_pcm8k(&path).unwrap();

        assert!((pcm.len() as i64 - 16_000).abs() <= 1, "len {}", pcm.len());
        // Skip the edges, where the filter sees the start and end of the signal.
        let mid = &pcm[800..15_200];
        assert!(tone_fraction(mid, 1000.0) > 0.95);
        let crossings = rising_zero_crossings(mid);
        assert!(
            (1798..=1802).contains(&crossings),
            "{crossings} crossings in 1.8 s"
        );
        // Both channels carried the same sine, so the average keeps its level (0.5 FS).
        let expected = 0.5 * 32768.0 / std::f32::consts::SQRT_2;
        assert!((rms(mid) / expected - 1.0).abs() < 0.02, "rms {}", rms(mid));
    }

    #[test]
    fn mono_16k_keeps_a_1khz_sine() {
        let dir = tmp();
        let path = dir.path().join("mono.wav");
        write_wav(&path, 16_000, 1, 1.5, sine(1000.0, 0.8));
        let pcm = decode_to_pcm8k(&path).unwrap();

        assert_eq!(pcm.len(), 12_000);
        let mid = &pcm[400..11_600];
        assert!(tone_fraction(mid, 1000.0) > 0.95);
        assert!((1399..=1401).contains(&rising_zero_crossings(mid)));
        let expected = 0.8 * 32768.0 / std::f32::consts::SQRT_2;
        assert!((rms(mid) / expected - 1.0).abs() < 0.02, "rms {}", rms(mid));
    }

    #[test]
    fn content_above_4khz_is_filtered_not_aliased() {
        for rate in [16_000, 44_100] {
            let dir = tmp();
            let path = dir.path().join("high.wav");
            // 6 kHz would fold to 2 kHz at 8 kHz without the anti-aliasing filter.
            write_wav(&path, rate, 1, 1.0, sine(6000.0, 0.9));
            let pcm = decode_to_pcm8k(&path).unwrap();
            let input_rms = 0.9 * 32768.0 / std::f32::consts::SQRT_2;
            let atten_db = 20.0 * (rms(&pcm[400..7_600]) / input_rms).log10();
            assert!(
                atten_db < -50.0,
                "{rate} Hz: 6 kHz only {atten_db:.1} dB down"
            );
        }
    }

    #[test]
    fn the_telephone_band_passes_flat() {
        for rate in [16_000, 44_100] {
            for freq in [300.0, 2_000.0, 3_400.0] {
                let dir = tmp();
                let path = dir.path().join("band.wav");
                write_wav(&path, rate, 1, 1.0, sine(freq, 0.5));
                let pcm = decode_to_pcm8k(&path).unwrap();
                let input_rms = 0.5 * 32768.0 / std::f32::consts::SQRT_2;
                let gain_db = 20.0 * (rms(&pcm[400..7_600]) / input_rms).log10();
                assert!(
                    gain_db.abs() < 0.1,
                    "{rate} Hz, {freq} Hz tone: {gain_db:.2} dB"
                );
            }
        }
    }

    #[test]
    fn odd_rates_and_channel_counts() {
        for (rate, channels) in [(22_050, 1), (48_000, 3), (11_025, 2), (6_000, 1)] {
            let dir = tmp();
            let path = dir.path().join("odd.wav");
            write_wav(&path, rate, channels, 1.0, sine(440.0, 0.5));
            let pcm = decode_to_pcm8k(&path).unwrap();
            // One second in, one second (8000 samples) out.
            assert!(
                (pcm.len() as i64 - 8_000).abs() <= 1,
                "{rate} Hz × {channels}: {} samples",
                pcm.len()
            );
            assert!(tone_fraction(&pcm[400..7_600], 440.0) > 0.9, "{rate} Hz");
        }
    }

    #[test]
    fn channels_are_averaged() {
        let dir = tmp();
        let path = dir.path().join("lr.wav");
        // Left carries the sine, right is silent: the mono mix is the sine at half level.
        let left_only = |c: u16, t: f32| {
            if c == 0 {
                0.8 * (TAU * 500.0 * t).sin()
            } else {
                0.0
            }
        };
        write_wav(&path, 8_000, 2, 1.0, left_only);
        let pcm = decode_to_pcm8k(&path).unwrap();
        let expected = 0.4 * 32768.0 / std::f32::consts::SQRT_2;
        assert!(
            (rms(&pcm) / expected - 1.0).abs() < 0.01,
            "rms {}",
            rms(&pcm)
        );
    }

    #[test]
    fn mono_8k_passes_through_sample_exact() {
        let dir = tmp();
        let path = dir.path().join("8k.wav");
        let written = write_wav(&path, 8_000, 1, 0.5, sine(700.0, 0.7));
        let pcm = decode_to_pcm8k(&path).unwrap();
        let expected: Vec<i16> = written[0].iter().map(|&s| to_i16(s)).collect();
        assert_eq!(pcm, expected);
    }

    #[test]
    fn overshoot_clips_instead_of_wrapping() {
        let dir = tmp();
        let path = dir.path().join("loud.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for n in 0..16_000 {
            w.write_sample(1.5 * (TAU * 250.0 * n as f32 / 16_000.0).sin())
                .unwrap();
        }
        w.finalize().unwrap();
        let pcm = decode_to_pcm8k(&path).unwrap();
        assert_eq!(pcm.iter().max(), Some(&i16::MAX));
        assert_eq!(pcm.iter().min(), Some(&i16::MIN));
        // A wrapped sample would flip sign at the crest: the waveform stays a 250 Hz sine.
        assert!((224..=226).contains(&rising_zero_crossings(&pcm[400..7_600])));
    }

    #[test]
    fn to_i16_rounds_and_saturates() {
        assert_eq!(to_i16(0.0), 0);
        assert_eq!(to_i16(1.0), i16::MAX);
        assert_eq!(to_i16(-1.0), i16::MIN);
        assert_eq!(to_i16(7.0), i16::MAX);
        assert_eq!(to_i16(-7.0), i16::MIN);
        assert_eq!(to_i16(f32::NAN), 0);
        assert_eq!(to_i16(0.5 / 32768.0), 1);
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = tmp();
        let path = dir.path().join("nope.wav");
        let err = decode_to_pcm8k(&path).unwrap_err();
        assert!(matches!(err, AudioError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.wav"), "{err}");
    }

    #[test]
    fn garbage_is_an_unsupported_format() {
        let dir = tmp();
        let path = dir.path().join("garbage.flac");
        let noise: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, noise).unwrap();
        let err = decode_to_pcm8k(&path).unwrap_err();
        assert!(
            matches!(err, AudioError::UnsupportedFormat { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("garbage.flac"), "{err}");
    }

    #[test]
    fn corrupt_flac_frames_are_a_decode_error() {
        let dir = tmp();
        let path = dir.path().join("greeting.flac");
        let mut bytes = std::fs::read(asset_dir().join("greeting.flac")).unwrap();
        // Keep the stream header, scramble the audio frames behind it.
        let len = bytes.len();
        for b in &mut bytes[len / 4..] {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        std::fs::write(&path, bytes).unwrap();
        let err = decode_to_pcm8k(&path).unwrap_err();
        assert!(matches!(err, AudioError::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("greeting.flac"), "{err}");
    }

    #[test]
    fn a_wav_without_samples_is_empty() {
        let dir = tmp();
        let path = dir.path().join("empty.wav");
        write_wav(&path, 16_000, 1, 0.0, sine(1.0, 0.0));
        let err = decode_to_pcm8k(&path).unwrap_err();
        assert!(matches!(err, AudioError::Empty { .. }), "{err:?}");
    }

    #[test]
    fn a_truncated_wav_yields_what_is_there() {
        let dir = tmp();
        let path = dir.path().join("cut.wav");
        write_wav(&path, 8_000, 1, 1.0, sine(400.0, 0.5));
        let bytes = std::fs::read(&path).unwrap();
        // Header (44 bytes) plus 0.5 s of the 1 s the header announces.
        std::fs::write(&path, &bytes[..44 + 8_000]).unwrap();
        let pcm = decode_to_pcm8k(&path).unwrap();
        assert!(
            !pcm.is_empty() && pcm.len() <= 4_000,
            "{} samples",
            pcm.len()
        );
    }

    #[test]
    fn sound_table_is_consistent() {
        for (i, sound) in Sound::ALL.iter().enumerate() {
            assert_eq!(*sound as usize, i, "{sound:?} out of order in ALL");
            assert_eq!(sound.to_string(), sound.stem());
        }
        let mut stems: Vec<_> = Sound::ALL.iter().map(|s| s.stem()).collect();
        stems.sort_unstable();
        stems.dedup();
        assert_eq!(stems.len(), Sound::ALL.len(), "duplicate stems");
        assert_eq!(Sound::HoldMusic.play_mode(), PlayMode::Loop);
        assert_eq!(Sound::Greeting.play_mode(), PlayMode::Once);
    }

    #[test]
    fn committed_files_match_the_sound_list() {
        let script = std::fs::read_to_string(asset_dir().join("generate.sh")).unwrap();
        let readme = std::fs::read_to_string(asset_dir().join("README.md")).unwrap();
        for sound in Sound::ALL {
            assert!(script.contains(sound.stem()), "generate.sh lacks {sound}");
            assert!(readme.contains(sound.stem()), "README.md lacks {sound}");
        }
        for entry in std::fs::read_dir(asset_dir()).unwrap() {
            let path = entry.unwrap().path();
            let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
                continue;
            };
            if !ASSET_EXTENSIONS.contains(&ext) {
                continue;
            }
            let stem = path.file_stem().unwrap().to_str().unwrap();
            assert!(
                Sound::ALL.iter().any(|s| s.stem() == stem),
                "{} is not a Sound",
                path.display()
            );
        }
    }

    #[test]
    fn committed_assets_load() {
        let assets = Assets::load(&asset_dir()).unwrap();
        for sound in Sound::ALL {
            let clip = assets.clip(sound);
            assert_eq!(clip.name(), sound.stem());
            assert!(!clip.pcm().is_empty(), "{sound} is empty");
            let peak_dbfs = 20.0 * (peak(clip.pcm()) as f32 / 32768.0).log10();
            let (lo, hi) = match sound {
                Sound::JoinTone | Sound::LeaveTone => (-18.0, -12.0),
                Sound::HoldMusic => (-13.0, -7.0),
                _ => (-6.0, -1.0),
            };
            assert!(
                (lo..=hi).contains(&peak_dbfs),
                "{sound}: peak {peak_dbfs:.1} dBFS"
            );
        }
        let hold = assets.clip(Sound::HoldMusic).pcm();
        // 32 s exactly, so the loop is a whole number of 20 ms frames and has no gap.
        assert_eq!(hold.len(), 32 * SAMPLE_RATE as usize);
        assert_eq!(hold.len() % crate::media::FRAME_SAMPLES, 0);
    }

    /// The DTMF frequencies (ITU-T Q.23).
    const DTMF_ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
    const DTMF_COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

    /// Strongest row and column tone fractions in each 25 ms block (205 samples, the classic
    /// DTMF Goertzel block at 8 kHz), for blocks above -50 dBFS.
    fn dtmf_scan(pcm: &[i16]) -> Vec<(f32, f32)> {
        pcm.chunks_exact(205)
            .filter(|b| rms(b) > 32768.0 * 0.003)
            .map(|b| {
                let best = |fs: &[f32]| fs.iter().map(|&f| tone_fraction(b, f)).fold(0.0, f32::max);
                (best(&DTMF_ROWS), best(&DTMF_COLS))
            })
            .collect()
    }

    #[test]
    fn hold_music_has_no_dtmf_like_dual_tones() {
        // The scanner itself must see a real digit ("5": 770 + 1336 Hz).
        let digit: Vec<i16> = (0..205)
            .map(|n| {
                let t = n as f32 / 8000.0;
                to_i16(0.3 * (TAU * 770.0 * t).sin() + 0.3 * (TAU * 1336.0 * t).sin())
            })
            .collect();
        let (row, col) = dtmf_scan(&digit)[0];
        assert!(
            row > 0.3 && col > 0.3,
            "scanner misses a digit: {row} {col}"
        );

        let pcm = decode_to_pcm8k(&asset_dir().join("hold_music.flac")).unwrap();
        let blocks = dtmf_scan(&pcm);
        assert!(blocks.len() > 1000);
        let worst_col = blocks.iter().map(|b| b.1).fold(0.0, f32::max);
        // A detector needs a column tone carrying a large share of the energy; allow 1 %.
        assert!(
            worst_col < 0.01,
            "a column tone carries {worst_col} of a block"
        );
    }

    #[test]
    fn missing_asset_names_the_sound_and_dir() {
        let dir = tmp();
        for sound in Sound::ALL.iter().filter(|s| **s != Sound::Goodbye) {
            let name = format!("{}.flac", sound.stem());
            std::fs::copy(asset_dir().join(&name), dir.path().join(&name)).unwrap();
        }
        let err = Assets::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                AudioError::MissingAsset {
                    sound: Sound::Goodbye,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("goodbye.flac") && msg.contains(&dir.path().display().to_string()));
    }

    #[test]
    fn corrupt_asset_names_the_file() {
        let dir = tmp();
        for sound in Sound::ALL {
            let name = format!("{}.flac", sound.stem());
            std::fs::copy(asset_dir().join(&name), dir.path().join(&name)).unwrap();
        }
        std::fs::write(dir.path().join("muted.flac"), b"this is not audio").unwrap();
        let err = Assets::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("muted.flac"), "{err}");
        assert!(
            matches!(err, AudioError::UnsupportedFormat { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn wav_is_accepted_in_place_of_flac() {
        let dir = tmp();
        for sound in Sound::ALL {
            let name = format!("{}.flac", sound.stem());
            std::fs::copy(asset_dir().join(&name), dir.path().join(&name)).unwrap();
        }
        std::fs::remove_file(dir.path().join("greeting.flac")).unwrap();
        write_wav(
            &dir.path().join("greeting.wav"),
            16_000,
            1,
            0.5,
            sine(440.0, 0.5),
        );
        let assets = Assets::load(dir.path()).unwrap();
        assert_eq!(assets.clip(Sound::Greeting).pcm().len(), 4_000);
    }

    #[test]
    fn a_missing_directory_is_reported() {
        let err = Assets::load(Path::new("/nonexistent/pinbridge-audio")).unwrap_err();
        assert!(matches!(err, AudioError::AssetDir { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/pinbridge-audio"));
    }
}
