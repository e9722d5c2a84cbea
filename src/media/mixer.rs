//! Conference mixing for one started meeting, sans-IO: each 20 ms frame the media worker
//! hands in what every participant said ([`Mixer::input`]), calls [`Mixer::mix`] once, and
//! reads back what each participant hears ([`Mixer::output`]).
//!
//! Rules:
//! - **N−1.** Everyone hears the sum of the others, never themselves. The sum is taken in
//!   32 bits and saturated to 16 bits at the end, so loud talkers clip instead of wrapping.
//! - **Active talkers.** Only the [`MAX_TALKERS`] loudest unmuted participants whose level
//!   is above [`NOISE_FLOOR_DBM0`] are mixed. A participant's level is the frame's mean
//!   power with a peak hold that decays by [`LEVEL_DECAY`] per frame (−10 dB in about
//!   200 ms), so a talker keeps the floor through the gaps between syllables and four
//!   people talking at once are all heard, while the line noise of fifty listeners is not
//!   summed into everyone's ear.
//! - **Encode once per distinct output.** A participant who is not an active talker and not
//!   excluded from a tone hears exactly the shared mix, which is encoded once per codec in
//!   use. Only active talkers (who must not hear themselves) and participants excluded from
//!   a tone (who must not hear their own join tone) get a frame of their own, so a frame
//!   costs at most `MAX_TALKERS + tones + 2` encodes whatever the meeting's size.
//! - **Tones** (join, leave) are added to the mix for everyone but the participant they are
//!   about, at most [`MAX_TONES`] at once (a burst of joins plays the latest ones).
//!
//! No allocation per frame: participants and tones live in vectors sized when they join.

use std::sync::Arc;

use super::player::Clip;
use super::{Codec, FRAME_SAMPLES, Frame, g711};

/// Participants mixed at once. Four voices at once is already more than anyone follows (a
/// question, an answer and two people talking over them); beyond that another voice adds
/// noise, not speech, and another encode per frame.
pub const MAX_TALKERS: usize = 4;
/// Below this a participant's input is line noise and is not mixed.
pub const NOISE_FLOOR_DBM0: f32 = -50.0;
/// Per-frame decay of the held level (power ratio): 0.8^10 ≈ −10 dB after 200 ms.
pub const LEVEL_DECAY: f32 = 0.8;
/// Tones played over the mix at once.
pub const MAX_TONES: usize = 4;

/// Mean power of a 0 dBm0 sine in 16-bit linear PCM (ITU-T G.711: 3.17 dBm0 full scale).
const DBM0_POWER: f32 = 2.5873e8;

/// One participant, named by the caller of the mixer (the media engine's session id).
pub type MemberId = u64;

#[derive(Debug)]
struct Member {
    id: MemberId,
    codec: Codec,
    muted: bool,
    input: [i16; FRAME_SAMPLES],
    has_input: bool,
    /// Held mean power of the input (see the module docs).
    level: f32,
    active: bool,
    /// This frame's output is `own`, not the shared mix.
    distinct: bool,
    own: Frame,
}

#[derive(Debug)]
struct Tone {
    clip: Arc<Clip>,
    pos: usize,
    except: MemberId,
}

/// One meeting's mix. See the module docs.
#[derive(Debug)]
pub struct Mixer {
    members: Vec<Member>,
    tones: Vec<Tone>,
    /// The shared output (every talker and every tone) per codec: index 0 μ-law, 1 A-law.
    shared: [Frame; 2],
    /// Scratch: the sum of the active talkers.
    sum: [i32; FRAME_SAMPLES],
    /// Scratch: the tones' samples, summed.
    tone_sum: [i32; FRAME_SAMPLES],
    /// Encodes done by the last `mix` (for tests and benchmarks).
    encodes: usize,
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer::new()
    }
}

impl Mixer {
    pub fn new() -> Self {
        Mixer {
            members: Vec::new(),
            tones: Vec::with_capacity(MAX_TONES),
            shared: [[0xFF; FRAME_SAMPLES], [0xD5; FRAME_SAMPLES]],
            sum: [0; FRAME_SAMPLES],
            tone_sum: [0; FRAME_SAMPLES],
            encodes: 0,
        }
    }

    /// Adds a participant (unmuted, silent until its first input). Adding one already
    /// present only updates its codec.
    pub fn add(&mut self, id: MemberId, codec: Codec) {
        if let Some(m) = self.member_mut(id) {
            m.codec = codec;
            return;
        }
        self.members.push(Member {
            id,
            codec,
            muted: false,
            input: [0; FRAME_SAMPLES],
            has_input: false,
            level: 0.0,
            active: false,
            distinct: false,
            own: [0; FRAME_SAMPLES],
        });
    }

    /// Removes a participant; true if it was there.
    pub fn remove(&mut self, id: MemberId) -> bool {
        let before = self.members.len();
        self.members.retain(|m| m.id != id);
        self.members.len() != before
    }

    pub fn contains(&self, id: MemberId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A muted participant still hears the meeting; nobody hears it.
    pub fn set_muted(&mut self, id: MemberId, muted: bool) {
        if let Some(m) = self.member_mut(id) {
            m.muted = muted;
        }
    }

    /// The codec a participant hears in (after a re-INVITE changed it).
    pub fn set_codec(&mut self, id: MemberId, codec: Codec) {
        if let Some(m) = self.member_mut(id) {
            m.codec = codec;
        }
    }

    /// What `id` said in the frame about to be mixed. A participant without input this
    /// frame (lost or late packet, on hold, suppressed key press) is silent in it.
    pub fn input(&mut self, id: MemberId, pcm: &[i16; FRAME_SAMPLES]) {
        if let Some(m) = self.member_mut(id) {
            m.input = *pcm;
            m.has_input = true;
        }
    }

    /// The participant at `index` (in joining order, `0..len()`): with
    /// [`Mixer::input_at`], lets a caller that walks the participants avoid a search each.
    pub fn id_at(&self, index: usize) -> MemberId {
        self.members[index].id
    }

    /// [`Mixer::input`] for the participant at `index`.
    pub fn input_at(&mut self, index: usize, pcm: &[i16; FRAME_SAMPLES]) {
        let m = &mut self.members[index];
        m.input = *pcm;
        m.has_input = true;
    }

    /// Plays `clip` once over the mix to everyone but `except`.
    pub fn play_tone(&mut self, clip: Arc<Clip>, except: MemberId) {
        if clip.pcm().is_empty() {
            return;
        }
        if self.tones.len() == MAX_TONES {
            self.tones.remove(0);
        }
        self.tones.push(Tone {
            clip,
            pos: 0,
            except,
        });
    }

    /// Mixes one frame from the inputs given since the last call, then forgets them.
    pub fn mix(&mut self) {
        self.encodes = 0;
        // Levels, and the loudest talkers above the floor.
        let floor = DBM0_POWER * 10f32.powf(NOISE_FLOOR_DBM0 / 10.0);
        let mut talkers: [Option<usize>; MAX_TALKERS] = [None; MAX_TALKERS];
        for m in &mut self.members {
            let power = if m.has_input && !m.muted {
                mean_power(&m.input)
            } else {
                0.0
            };
            m.level = power.max(m.level * LEVEL_DECAY);
            if m.muted {
                m.level = 0.0;
            }
            m.active = false;
        }
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if !m.has_input || m.muted || m.level < floor {
                continue;
            }
            let members = &self.members;
            insert_talker(&mut talkers, i, |j| members[j].level);
        }
        self.sum = [0; FRAME_SAMPLES];
        for &i in talkers.iter().flatten() {
            let m = &mut self.members[i];
            m.active = true;
            for (s, &x) in self.sum.iter_mut().zip(&m.input) {
                *s += i32::from(x);
            }
        }
        // Tones.
        self.tone_sum = [0; FRAME_SAMPLES];
        for tone in &self.tones {
            let pcm = tone.clip.pcm();
            let end = (tone.pos + FRAME_SAMPLES).min(pcm.len());
            for (s, &x) in self.tone_sum.iter_mut().zip(&pcm[tone.pos..end]) {
                *s += i32::from(x);
            }
        }
        // Who needs a frame of their own; the shared frame for the rest.
        let mut shared_needed = [false; 2];
        for m in &mut self.members {
            m.distinct = m.active || self.tones.iter().any(|t| t.except == m.id);
            if !m.distinct {
                shared_needed[law(m.codec)] = true;
            }
        }
        let mut pcm = [0i16; FRAME_SAMPLES];
        for codec in [Codec::Pcmu, Codec::Pcma] {
            if shared_needed[law(codec)] {
                for ((p, &s), &t) in pcm.iter_mut().zip(&self.sum).zip(&self.tone_sum) {
                    *p = saturate(s + t);
                }
                g711::encode(codec, &pcm, &mut self.shared[law(codec)]);
                self.encodes += 1;
            }
        }
        for m in self.members.iter_mut().filter(|m| m.distinct) {
            for (k, p) in pcm.iter_mut().enumerate() {
                let mut x = self.sum[k];
                if m.active {
                    x -= i32::from(m.input[k]);
                }
                *p = saturate(x);
            }
            // The tones this participant is not excluded from.
            for tone in self.tones.iter().filter(|t| t.except != m.id) {
                let src = tone.clip.pcm();
                let end = (tone.pos + FRAME_SAMPLES).min(src.len());
                for (p, &x) in pcm.iter_mut().zip(&src[tone.pos..end]) {
                    *p = saturate(i32::from(*p) + i32::from(x));
                }
            }
            g711::encode(m.codec, &pcm, &mut m.own);
            self.encodes += 1;
        }
        // Next frame.
        for m in &mut self.members {
            m.has_input = false;
        }
        for tone in &mut self.tones {
            tone.pos += FRAME_SAMPLES;
        }
        self.tones.retain(|t| t.pos < t.clip.pcm().len());
    }

    /// What `id` hears in the frame last mixed, in its codec.
    pub fn output(&self, id: MemberId) -> Option<&Frame> {
        let m = self.members.iter().find(|m| m.id == id)?;
        Some(if m.distinct {
            &m.own
        } else {
            &self.shared[law(m.codec)]
        })
    }

    /// Every participant with what it hears, in the order they joined.
    pub fn outputs(&self) -> impl Iterator<Item = (MemberId, &Frame)> {
        self.members.iter().map(|m| {
            let frame = if m.distinct {
                &m.own
            } else {
                &self.shared[law(m.codec)]
            };
            (m.id, frame)
        })
    }

    /// The participants mixed into the last frame.
    pub fn active_talkers(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.members.iter().filter(|m| m.active).map(|m| m.id)
    }

    /// G.711 encodes done by the last [`Mixer::mix`].
    pub fn encodes(&self) -> usize {
        self.encodes
    }

    fn member_mut(&mut self, id: MemberId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }
}

/// Keeps `talkers` the (up to) `MAX_TALKERS` indices with the highest `level`, loudest
/// first; on a tie the participant already there stays (who joined earlier wins).
fn insert_talker(
    talkers: &mut [Option<usize>; MAX_TALKERS],
    i: usize,
    level: impl Fn(usize) -> f32,
) {
    let mine = level(i);
    let Some(at) = talkers
        .iter()
        .position(|t| t.is_none_or(|j| level(j) < mine))
    else {
        return;
    };
    for k in (at + 1..MAX_TALKERS).rev() {
        talkers[k] = talkers[k - 1];
    }
    talkers[at] = Some(i);
}

fn mean_power(pcm: &[i16; FRAME_SAMPLES]) -> f32 {
    let sum: i64 = pcm.iter().map(|&x| i64::from(x) * i64::from(x)).sum();
    sum as f32 / FRAME_SAMPLES as f32
}

fn saturate(x: i32) -> i16 {
    x.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

fn law(codec: Codec) -> usize {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(value: i16) -> [i16; FRAME_SAMPLES] {
        [value; FRAME_SAMPLES]
    }

    /// The mean sample `id` hears, decoded.
    fn heard(mixer: &Mixer, id: MemberId, codec: Codec) -> i32 {
        let frame = mixer.output(id).expect("a member");
        let mut pcm = [0i16; FRAME_SAMPLES];
        g711::decode(codec, frame, &mut pcm);
        pcm.iter().map(|&x| i32::from(x)).sum::<i32>() / FRAME_SAMPLES as i32
    }

    fn near(actual: i32, expected: i32) -> bool {
        (actual - expected).abs() <= expected.abs() / 20 + 16
    }

    fn meeting(n: u64, codec: Codec) -> Mixer {
        let mut mixer = Mixer::new();
        for id in 1..=n {
            mixer.add(id, codec);
        }
        mixer
    }

    #[test]
    fn everyone_hears_the_others_and_not_themselves() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut mixer = meeting(3, codec);
            mixer.input(1, &dc(1000));
            mixer.input(2, &dc(2000));
            mixer.input(3, &dc(4000));
            mixer.mix();
            assert!(near(heard(&mixer, 1, codec), 6000), "{codec:?}");
            assert!(near(heard(&mixer, 2, codec), 5000), "{codec:?}");
            assert!(near(heard(&mixer, 3, codec), 3000), "{codec:?}");
        }
    }

    #[test]
    fn a_listener_hears_the_sum_of_the_talkers() {
        let mut mixer = meeting(4, Codec::Pcmu);
        mixer.input(1, &dc(1000));
        mixer.input(2, &dc(-3000));
        mixer.input(4, &dc(0));
        mixer.mix();
        assert!(near(heard(&mixer, 3, Codec::Pcmu), -2000));
        assert!(near(heard(&mixer, 4, Codec::Pcmu), -2000));
    }

    #[test]
    fn loud_sums_saturate_instead_of_wrapping() {
        let mut mixer = meeting(3, Codec::Pcmu);
        mixer.input(1, &dc(30000));
        mixer.input(2, &dc(30000));
        mixer.mix();
        assert!(heard(&mixer, 3, Codec::Pcmu) > 30000);
        mixer.input(1, &dc(-30000));
        mixer.input(2, &dc(-30000));
        mixer.mix();
        assert!(heard(&mixer, 3, Codec::Pcmu) < -30000);
    }

    #[test]
    fn only_the_four_loudest_above_the_floor_are_mixed() {
        let mut mixer = meeting(7, Codec::Pcmu);
        // Levels 100 to 1600 and one under the floor (~ -60 dBm0).
        mixer.input(1, &dc(100));
        mixer.input(2, &dc(200));
        mixer.input(3, &dc(400));
        mixer.input(4, &dc(800));
        mixer.input(5, &dc(1600));
        mixer.input(6, &dc(10));
        mixer.mix();
        let talkers: Vec<_> = mixer.active_talkers().collect();
        assert_eq!(talkers, [2, 3, 4, 5]);
        assert!(near(heard(&mixer, 7, Codec::Pcmu), 3000));
        assert!(near(heard(&mixer, 1, Codec::Pcmu), 3000));
        assert!(near(heard(&mixer, 5, Codec::Pcmu), 1400));
    }

    #[test]
    fn a_talker_keeps_the_floor_through_a_short_pause() {
        let mut mixer = meeting(6, Codec::Pcmu);
        for id in 1..=4 {
            mixer.input(id, &dc(1000));
        }
        mixer.mix();
        // Talker 1 pauses for a frame (quiet input); a newcomer at a lower level waits.
        let others = |mixer: &mut Mixer| {
            for id in 2..=4 {
                mixer.input(id, &dc(1000));
            }
            mixer.input(5, &dc(600));
        };
        mixer.input(1, &dc(0));
        others(&mut mixer);
        mixer.mix();
        let talkers: Vec<_> = mixer.active_talkers().collect();
        assert_eq!(talkers, [1, 2, 3, 4]);
        // After enough quiet frames the newcomer takes over.
        for _ in 0..10 {
            mixer.input(1, &dc(0));
            others(&mut mixer);
            mixer.mix();
        }
        let talkers: Vec<_> = mixer.active_talkers().collect();
        assert_eq!(talkers, [2, 3, 4, 5]);
    }

    #[test]
    fn one_encode_per_distinct_output() {
        let mut mixer = meeting(50, Codec::Pcmu);
        for id in 1..=10 {
            mixer.input(id, &dc(500 + id as i16));
        }
        mixer.mix();
        // The shared frame plus one per talker.
        assert_eq!(mixer.encodes(), 1 + MAX_TALKERS);
        mixer.add(51, Codec::Pcma);
        mixer.mix();
        assert_eq!(mixer.encodes(), 2, "silence: one shared frame per law");
        let distinct: std::collections::HashSet<&Frame> =
            mixer.outputs().map(|(_, frame)| frame).collect();
        assert_eq!(distinct.len(), 2);
    }

    #[test]
    fn a_muted_participant_hears_but_is_not_heard() {
        let mut mixer = meeting(3, Codec::Pcma);
        mixer.set_muted(2, true);
        mixer.input(1, &dc(1000));
        mixer.input(2, &dc(5000));
        mixer.mix();
        assert!(near(heard(&mixer, 3, Codec::Pcma), 1000));
        assert!(near(heard(&mixer, 2, Codec::Pcma), 1000));
        mixer.set_muted(2, false);
        mixer.input(2, &dc(5000));
        mixer.mix();
        assert!(near(heard(&mixer, 3, Codec::Pcma), 5000));
    }

    #[test]
    fn no_input_is_silence() {
        let mut mixer = meeting(2, Codec::Pcmu);
        mixer.input(1, &dc(1000));
        mixer.mix();
        assert!(near(heard(&mixer, 2, Codec::Pcmu), 1000));
        mixer.mix();
        assert_eq!(mixer.output(2), Some(&[0xFF; FRAME_SAMPLES]));
    }

    #[test]
    fn a_tone_is_heard_by_all_but_the_one_it_is_about_for_its_length() {
        let mut mixer = meeting(3, Codec::Pcmu);
        let clip = Arc::new(Clip::from_pcm("join_tone", vec![2000; 2 * FRAME_SAMPLES]));
        mixer.play_tone(clip, 3);
        for _ in 0..2 {
            mixer.input(1, &dc(1000));
            mixer.mix();
            assert!(near(heard(&mixer, 1, Codec::Pcmu), 2000));
            assert!(near(heard(&mixer, 2, Codec::Pcmu), 3000));
            assert!(near(heard(&mixer, 3, Codec::Pcmu), 1000));
        }
        mixer.input(1, &dc(1000));
        mixer.mix();
        assert!(
            near(heard(&mixer, 2, Codec::Pcmu), 1000),
            "the tone is over"
        );
    }

    #[test]
    fn members_come_and_go() {
        let mut mixer = meeting(2, Codec::Pcmu);
        assert!(mixer.remove(1));
        assert!(!mixer.remove(1));
        assert!(!mixer.contains(1));
        mixer.input(1, &dc(1000));
        mixer.mix();
        assert_eq!(mixer.len(), 1);
        assert_eq!(mixer.output(2), Some(&[0xFF; FRAME_SAMPLES]));
        assert_eq!(mixer.output(1), None);
    }
}
