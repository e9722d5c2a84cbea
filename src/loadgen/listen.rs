//! What a load-generator caller sends and whether it heard what it should, sans-IO and
//! cheap enough for thousands of calls.
//!
//! - **Sending** ([`SendAudio`]): by default every caller sends a steady tone. Tones are
//!   multiples of 50 Hz, so one 20 ms frame holds whole periods and a single pre-encoded
//!   frame per tone is sent over and over ([`ToneFrame`]). With `--audio-file` every caller
//!   loops that file instead ([`FileFrames`]: decoded once, pre-encoded in both laws), each
//!   from its own starting frame so the callers of a meeting do not talk in unison.
//! - **Lobby**: the server sends prompts and hold music as the frames of its pre-encoded
//!   clips, byte for byte, so [`KnownFrames`] (every frame of every sound, both laws, in a
//!   hash set) recognises them with one lookup per packet. A lobby caller passes when it got
//!   at least [`LOBBY_MIN_HOLD_FRAMES`] hold-music frames and no *foreign* frame (non-silent
//!   and not from any clip: someone's voice) after the hold music started.
//! - **Meeting**: the first foreign frame is the moment the caller hears the meeting
//!   ("in meeting"). From [`MEETING_SETTLE`] later, [`MEETING_WINDOW_FRAMES`] frames (1 s)
//!   are kept and judged:
//!   - *tone mode* ([`Expect::Meeting`]): a Goertzel filter at each participant's tone
//!     measures which tones are in the window; the caller passes when at least one other
//!     participant's tone carries [`TONE_PRESENT`] of the window's energy and its own tone
//!     does not (N−1 mixing).
//!   - *file mode* ([`Expect::MeetingAudio`]): everyone sends the same recording, so whose
//!     audio it is cannot be told; the caller passes when at least
//!     [`MEETING_AUDIBLE_SHARE`] of the window's frames are audible (the others' audio
//!     reached it). It does **not** check that the caller does not hear itself: the N−1
//!     check needs tone mode. A file that is one of the server's own sounds (as in the
//!     smoke test) is taken for a prompt, frame for frame, while only one other participant
//!     is heard, so "in meeting" starts once two or more are mixed: a meeting of two needs
//!     some other recording.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audio::{Assets, Sound};
use crate::media::player::Clip;
use crate::media::rtp::RtpPacket;
use crate::media::{Codec, FRAME_SAMPLES, Frame, PTIME, PayloadType, SAMPLE_RATE, g711};

use super::stats::RtpStats;

/// Frames of hold music a lobby caller must hear (0.5 s).
pub const LOBBY_MIN_HOLD_FRAMES: u32 = 25;
/// Time from the first meeting audio to the start of the analysis window: lets join tones
/// and the mixer's talker selection settle.
pub const MEETING_SETTLE: Duration = Duration::from_millis(500);
/// Frames analysed per meeting caller (1 s).
pub const MEETING_WINDOW_FRAMES: usize = 50;
/// Fewest frames a cut-short window may have and still be judged (0.5 s).
const MEETING_MIN_FRAMES: usize = 25;
/// Share of the window's energy at a tone's frequency above which the tone is "heard". With
/// four equal talkers mixed each holds about 25 %; a tone absent from the mix holds only
/// the G.711 quantisation noise that falls in its 1 Hz bin (far below 0.1 %).
pub const TONE_PRESENT: f64 = 0.02;
/// File mode: share of the window's frames that must be audible (not silence). Two or more
/// others talking over each other from different points of a recording leave few silent
/// frames; one other talker still passes with the pauses of ordinary speech.
pub const MEETING_AUDIBLE_SHARE: f64 = 0.25;
/// Mean absolute sample value below which a frame counts as silence (about −60 dBm0).
const SILENCE_MEAN_ABS: u32 = 20;
/// Lowest participant tone and the step between tones (multiples of 50 Hz fit a 20 ms
/// frame exactly).
const TONE_BASE_HZ: u32 = 300;
const TONE_STEP_HZ: u32 = 50;
/// Distinct participant tones: 300 Hz … 3650 Hz.
pub const TONES: u32 = 68;
/// The tone lobby-only callers send (nobody listens for it).
pub const LOBBY_TONE_HZ: u32 = 250;
/// Peak amplitude of the tones (about −15 dBm0): four mixed stay below full scale.
const TONE_AMPLITUDE: f64 = 5000.0;

/// The tone of the participant at `position` in its meeting.
pub fn participant_tone(position: usize) -> u32 {
    TONE_BASE_HZ + TONE_STEP_HZ * (position as u32 % TONES)
}

/// One 20 ms frame of a tone, in both laws.
#[derive(Clone, Debug)]
pub struct ToneFrame {
    pub pcmu: Frame,
    pub pcma: Frame,
}

impl ToneFrame {
    /// `hz` must be a multiple of 50 so the frame repeats seamlessly.
    pub fn new(hz: u32) -> Self {
        let mut pcm = [0i16; FRAME_SAMPLES];
        for (i, s) in pcm.iter_mut().enumerate() {
            let phase =
                2.0 * std::f64::consts::PI * f64::from(hz) * i as f64 / f64::from(SAMPLE_RATE);
            *s = (TONE_AMPLITUDE * phase.sin()).round() as i16;
        }
        let mut pcmu = [0u8; FRAME_SAMPLES];
        let mut pcma = [0u8; FRAME_SAMPLES];
        g711::encode(Codec::Pcmu, &pcm, &mut pcmu);
        g711::encode(Codec::Pcma, &pcm, &mut pcma);
        ToneFrame { pcmu, pcma }
    }

    pub fn frame(&self, codec: Codec) -> &Frame {
        match codec {
            Codec::Pcmu => &self.pcmu,
            Codec::Pcma => &self.pcma,
        }
    }
}

/// A recording as 20 ms frames in both laws, looped by every caller in file mode.
#[derive(Debug)]
pub struct FileFrames {
    pcmu: Arc<[Frame]>,
    pcma: Arc<[Frame]>,
}

impl FileFrames {
    /// Cuts 8 kHz PCM into frames, the last one padded with silence (at least one frame),
    /// as the server's own clips are ([`Clip::from_pcm`]).
    pub fn from_pcm(pcm: &[i16]) -> Self {
        let pcm = if pcm.is_empty() {
            vec![0; FRAME_SAMPLES]
        } else {
            pcm.to_vec()
        };
        let clip = Clip::from_pcm("--audio-file", pcm);
        FileFrames {
            pcmu: clip.frames(Codec::Pcmu).into(),
            pcma: clip.frames(Codec::Pcma).into(),
        }
    }

    /// Frames in the loop.
    pub fn len(&self) -> usize {
        self.pcmu.len()
    }

    /// Never: there is always at least one frame.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn frames(&self, codec: Codec) -> &Arc<[Frame]> {
        match codec {
            Codec::Pcmu => &self.pcmu,
            Codec::Pcma => &self.pcma,
        }
    }

    /// The frame call `call` of `calls` starts at: spread evenly over the recording, so no
    /// two calls start at the same frame while the recording has a frame for each.
    pub fn start(&self, call: usize, calls: usize) -> usize {
        let len = self.len();
        if calls <= len {
            call * len / calls
        } else {
            call % len
        }
    }
}

/// What every caller sends.
#[derive(Clone, Debug)]
pub enum SendAudio {
    /// Its own tone ([`participant_tone`]).
    Tones,
    /// A recording (`--audio-file`), from a different starting frame per call.
    File {
        /// As given on the command line, for the report.
        path: String,
        frames: Arc<FileFrames>,
    },
}

/// Every frame the server can send from its clips, and which are hold music.
#[derive(Debug, Default)]
pub struct KnownFrames {
    clips: HashSet<Frame>,
    hold: HashSet<Frame>,
}

impl KnownFrames {
    pub fn from_assets(assets: &Assets) -> Self {
        let mut known = KnownFrames::default();
        for sound in Sound::ALL {
            for codec in [Codec::Pcmu, Codec::Pcma] {
                for f in assets.clip(sound).frames(codec) {
                    known.clips.insert(*f);
                    if sound == Sound::HoldMusic {
                        known.hold.insert(*f);
                    }
                }
            }
        }
        known
    }

    fn classify(&self, frame: &Frame, codec: Codec) -> Heard {
        if self.hold.contains(frame) {
            Heard::HoldMusic
        } else if self.clips.contains(frame) || is_silent(frame, codec) {
            Heard::Prompt
        } else {
            Heard::Foreign
        }
    }
}

enum Heard {
    HoldMusic,
    /// A prompt, a tone of the server's, or silence.
    Prompt,
    /// Audio that is not one of the server's clips: other participants.
    Foreign,
}

fn is_silent(frame: &Frame, codec: Codec) -> bool {
    let mut pcm = [0i16; FRAME_SAMPLES];
    g711::decode(codec, frame, &mut pcm);
    mean_abs(&pcm) <= SILENCE_MEAN_ABS
}

fn mean_abs(pcm: &[i16]) -> u32 {
    let sum: u32 = pcm.iter().map(|s| u32::from(s.unsigned_abs())).sum();
    sum / pcm.len().max(1) as u32
}

/// What a caller should hear.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Hold music: the conference's organizer never comes.
    Lobby,
    /// The meeting: `own` is this caller's tone, `others` those of the other participants.
    Meeting { own: u32, others: Vec<u32> },
    /// The meeting, in file mode: audible audio from the others (whose, and whether it is
    /// the caller's own, is not checked).
    MeetingAudio,
}

impl Expect {
    fn is_meeting(&self) -> bool {
        matches!(self, Expect::Meeting { .. } | Expect::MeetingAudio)
    }
}

/// The verdict on what one caller heard.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub ok: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One call's receive side: RTP statistics plus the listening check.
#[derive(Debug)]
pub struct CallMedia {
    pub stats: RtpStats,
    expect: Expect,
    known: Arc<KnownFrames>,
    audio_pt: Option<(PayloadType, Codec)>,
    hold_frames: u32,
    foreign_after_hold: u32,
    /// When the first foreign frame arrived: the caller hears the meeting.
    first_foreign: Option<Instant>,
    window: Vec<i16>,
    /// Packets that were not RTP we could read.
    pub malformed: u64,
}

impl CallMedia {
    pub fn new(epoch: Instant, expect: Expect, known: Arc<KnownFrames>) -> Self {
        CallMedia {
            stats: RtpStats::new(epoch),
            expect,
            known,
            audio_pt: None,
            hold_frames: 0,
            foreign_after_hold: 0,
            first_foreign: None,
            window: Vec::new(),
            malformed: 0,
        }
    }

    /// The negotiated audio payload type; packets of other types (before the answer is
    /// known, or telephone-events) count in the statistics but are not listened to.
    pub fn set_audio(&mut self, pt: PayloadType, codec: Codec) {
        self.audio_pt = Some((pt, codec));
    }

    /// One datagram from the RTP socket, received at `now`.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let Ok(packet) = RtpPacket::parse(datagram) else {
            self.malformed += 1;
            return;
        };
        self.stats.handle_packet(now, &packet.header);
        let (pt, codec) = match self.audio_pt {
            Some((pt, codec)) if pt == packet.header.payload_type => (pt, codec),
            // Before the 200 OK is processed the payload type is not known yet; the server
            // answers PCMU to our offer, which lists it first.
            None if packet.header.payload_type == Codec::Pcmu.payload_type() => {
                (Codec::Pcmu.payload_type(), Codec::Pcmu)
            }
            _ => return,
        };
        let _ = pt;
        let Ok(frame) = <&Frame>::try_from(packet.payload) else {
            return;
        };
        match self.known.classify(frame, codec) {
            Heard::HoldMusic => self.hold_frames += 1,
            Heard::Prompt => {}
            Heard::Foreign => {
                self.first_foreign.get_or_insert(now);
                if self.hold_frames > 0 {
                    self.foreign_after_hold += 1;
                }
            }
        }
        if let Some(first) = self.first_foreign
            && self.expect.is_meeting()
            && now >= first + MEETING_SETTLE
            && self.window.len() < MEETING_WINDOW_FRAMES * FRAME_SAMPLES
        {
            let mut pcm = [0i16; FRAME_SAMPLES];
            g711::decode(codec, frame, &mut pcm);
            self.window.extend_from_slice(&pcm);
        }
    }

    /// When the caller first heard the meeting.
    pub fn in_meeting_at(&self) -> Option<Instant> {
        if self.expect.is_meeting() {
            self.first_foreign
        } else {
            None
        }
    }

    /// Whether the caller heard what it should (judge once the call is over).
    pub fn verdict(&self) -> Verdict {
        let fail = |p: String| Verdict {
            ok: false,
            problem: Some(p),
        };
        match &self.expect {
            Expect::Lobby => {
                if self.hold_frames < LOBBY_MIN_HOLD_FRAMES {
                    fail(format!(
                        "lobby: {} ms of hold music, want at least {} ms",
                        self.hold_frames * PTIME.as_millis() as u32,
                        LOBBY_MIN_HOLD_FRAMES * PTIME.as_millis() as u32
                    ))
                } else if self.foreign_after_hold > 0 {
                    fail(format!(
                        "lobby: {} frames of other audio after the hold music started",
                        self.foreign_after_hold
                    ))
                } else {
                    Verdict {
                        ok: true,
                        problem: None,
                    }
                }
            }
            Expect::Meeting { .. } | Expect::MeetingAudio => {
                if self.first_foreign.is_none() {
                    return fail("meeting: never heard the other participants".into());
                }
                if self.window.len() < MEETING_MIN_FRAMES * FRAME_SAMPLES {
                    return fail(format!(
                        "meeting: only {} ms of meeting audio to analyse",
                        self.window.len() / 8
                    ));
                }
                let Expect::Meeting { own, others } = &self.expect else {
                    return self.audible_verdict();
                };
                let energy: f64 = self
                    .window
                    .iter()
                    .map(|&s| f64::from(s) * f64::from(s))
                    .sum();
                let share = |hz: u32| tone_share(&self.window, hz, energy);
                let shares: Vec<f64> = others.iter().map(|&hz| share(hz)).collect();
                let heard = shares.iter().filter(|&&x| x >= TONE_PRESENT).count();
                let loudest = shares.iter().copied().fold(0.0, f64::max);
                let own_share = share(*own);
                if own_share >= TONE_PRESENT {
                    fail(format!(
                        "meeting: hears its own tone ({:.0} % of the audio)",
                        own_share * 100.0
                    ))
                } else if heard == 0 {
                    let rms = (energy / self.window.len() as f64).sqrt();
                    fail(format!(
                        "meeting: none of the other participants' tones is in the audio \
                         (loudest {:.1} % of it, {} ms analysed, RMS {rms:.0})",
                        loudest * 100.0,
                        self.window.len() / 8
                    ))
                } else {
                    Verdict {
                        ok: true,
                        problem: None,
                    }
                }
            }
        }
    }

    /// File mode: enough of the window is audible.
    fn audible_verdict(&self) -> Verdict {
        let frames = self.window.len() / FRAME_SAMPLES;
        let audible = self
            .window
            .chunks_exact(FRAME_SAMPLES)
            .filter(|f| mean_abs(f) > SILENCE_MEAN_ABS)
            .count();
        let share = audible as f64 / frames as f64;
        if share < MEETING_AUDIBLE_SHARE {
            return Verdict {
                ok: false,
                problem: Some(format!(
                    "meeting: the others' audio is audible in {:.0} % of {} ms, want {:.0} %",
                    share * 100.0,
                    frames * PTIME.as_millis() as usize,
                    MEETING_AUDIBLE_SHARE * 100.0
                )),
            };
        }
        Verdict {
            ok: true,
            problem: None,
        }
    }
}

/// The share of `energy` (Σx² of `x`) that lies at `hz`: about 1 for a pure tone there.
fn tone_share(x: &[i16], hz: u32, energy: f64) -> f64 {
    if energy <= 0.0 || x.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A sine of amplitude A over N samples: power = (A·N/2)², energy = A²·N/2.
    power / (energy * x.len() as f64 / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Ssrc;
    use crate::media::rtp::RtpHeader;

    fn mix(tones: &[u32], frames: usize) -> Vec<Frame> {
        (0..frames)
            .map(|_| {
                let mut pcm = [0i16; FRAME_SAMPLES];
                for (i, s) in pcm.iter_mut().enumerate() {
                    let v: f64 = tones
                        .iter()
                        .map(|&hz| {
                            TONE_AMPLITUDE
                                * (2.0 * std::f64::consts::PI * f64::from(hz) * i as f64 / 8000.0)
                                    .sin()
                        })
                        .sum();
                    *s = v as i16;
                }
                let mut f = [0u8; FRAME_SAMPLES];
                g711::encode(Codec::Pcmu, &pcm, &mut f);
                f
            })
            .collect()
    }

    fn feed(media: &mut CallMedia, t0: Instant, frames: &[Frame]) {
        for (i, f) in frames.iter().enumerate() {
            let h = RtpHeader {
                payload_type: PayloadType(0),
                marker: false,
                sequence: i as u16,
                timestamp: 160 * i as u32,
                ssrc: Ssrc(1),
            };
            let mut buf = [0u8; 200];
            let n = h.write(f, &mut buf).unwrap();
            media.handle_datagram(t0 + PTIME * i as u32, &buf[..n]);
        }
    }

    fn meeting(own: u32) -> CallMedia {
        let expect = Expect::Meeting {
            own,
            others: vec![300, 350, 400, 450],
        };
        CallMedia::new(Instant::now(), expect, Arc::default())
    }

    #[test]
    fn hearing_others_but_not_oneself_passes() {
        let mut m = meeting(500);
        let t0 = Instant::now();
        feed(&mut m, t0, &mix(&[300, 350, 400], 100));
        assert_eq!(
            m.verdict(),
            Verdict {
                ok: true,
                problem: None
            }
        );
        assert_eq!(m.in_meeting_at(), Some(t0));
        assert_eq!(m.stats.lost(), 0);
    }

    #[test]
    fn hearing_oneself_or_nobody_fails() {
        let mut m = meeting(350);
        feed(&mut m, Instant::now(), &mix(&[300, 350], 100));
        assert!(m.verdict().problem.unwrap().contains("own tone"));
        let mut m = meeting(500);
        feed(&mut m, Instant::now(), &mix(&[1000], 100));
        assert!(m.verdict().problem.unwrap().contains("none of the other"));
        let mut m = meeting(500);
        feed(&mut m, Instant::now(), &mix(&[], 100));
        assert!(m.verdict().problem.unwrap().contains("never heard"));
    }

    #[test]
    fn file_mode_meetings_need_audible_audio_only() {
        let meeting_audio = || CallMedia::new(Instant::now(), Expect::MeetingAudio, Arc::default());
        // Any audible mix passes, whoever's it is: N−1 is not checked in file mode.
        let mut m = meeting_audio();
        let t0 = Instant::now();
        feed(&mut m, t0, &mix(&[300, 350], 100));
        assert!(m.verdict().ok, "{:?}", m.verdict());
        assert_eq!(m.in_meeting_at(), Some(t0));
        // Speech with pauses: audible in 40 % of the frames still passes.
        let mut frames = Vec::new();
        for _ in 0..20 {
            frames.extend(mix(&[400], 2));
            frames.extend(mix(&[], 3));
        }
        let mut m = meeting_audio();
        feed(&mut m, Instant::now(), &frames);
        assert!(m.verdict().ok, "{:?}", m.verdict());
        // A moment of audio, then silence: not the others' audio.
        let mut frames = mix(&[400], 1);
        frames.extend(mix(&[], 99));
        let mut m = meeting_audio();
        feed(&mut m, Instant::now(), &frames);
        let problem = m.verdict().problem.unwrap();
        assert!(problem.contains("audible in 0 % of 1000 ms"), "{problem}");
        let mut m = meeting_audio();
        feed(&mut m, Instant::now(), &mix(&[], 100));
        assert!(m.verdict().problem.unwrap().contains("never heard"));
    }

    #[test]
    fn file_frames_are_padded_and_calls_start_apart() {
        let pcm: Vec<i16> = (0..FRAME_SAMPLES * 10 + 7)
            .map(|i| (i % 100) as i16 * 50)
            .collect();
        let f = FileFrames::from_pcm(&pcm);
        assert_eq!(f.len(), 11);
        let mut last = [0i16; FRAME_SAMPLES];
        g711::decode(Codec::Pcma, &f.frames(Codec::Pcma)[10], &mut last);
        assert!(
            last[7..].iter().all(|&s| s.unsigned_abs() <= 8),
            "padded with silence"
        );
        assert_eq!(FileFrames::from_pcm(&[]).len(), 1);
        // Fewer calls than frames: all distinct, spread over the loop.
        let starts: Vec<usize> = (0..4).map(|c| f.start(c, 4)).collect();
        assert_eq!(starts, [0, 2, 5, 8]);
        // More calls than frames: every frame is someone's start.
        let starts: HashSet<usize> = (0..30).map(|c| f.start(c, 30)).collect();
        assert_eq!(starts.len(), 11);
    }

    #[test]
    fn tone_frames_repeat_seamlessly_and_are_found_by_goertzel() {
        let f = ToneFrame::new(participant_tone(3));
        let mut pcm = vec![0i16; 8000];
        for chunk in pcm.chunks_mut(FRAME_SAMPLES) {
            g711::decode(Codec::Pcmu, &f.pcmu, chunk);
        }
        let e: f64 = pcm.iter().map(|&s| f64::from(s).powi(2)).sum();
        assert!(tone_share(&pcm, 450, e) > 0.95);
        assert!(tone_share(&pcm, 500, e) < 0.001);
    }

    #[test]
    fn lobby_callers_need_hold_music_and_nothing_foreign() {
        let hold = mix(&[700], 1);
        let mut known = KnownFrames::default();
        known.hold.insert(hold[0]);
        known.clips.insert(hold[0]);
        let known = Arc::new(known);
        let mut m = CallMedia::new(Instant::now(), Expect::Lobby, known.clone());
        feed(&mut m, Instant::now(), &vec![hold[0]; 30]);
        assert!(m.verdict().ok);
        let mut m = CallMedia::new(Instant::now(), Expect::Lobby, known);
        let mut frames = vec![hold[0]; 30];
        frames.extend(mix(&[300], 2));
        feed(&mut m, Instant::now(), &frames);
        assert!(m.verdict().problem.unwrap().contains("other audio"));
    }
}
