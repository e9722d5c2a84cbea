//! In-band DTMF: finds key presses in decoded 8 kHz audio, for callers whose phone sends its
//! tones as sound instead of RFC 4733 events or SIP INFO.
//!
//! [`InbandDetector`] is a sans-IO machine on the sample clock: the media layer hands it
//! linear PCM in pieces of any length ([`handle_samples`](InbandDetector::handle_samples),
//! typically one 20 ms frame) and drains [`poll_event`](InbandDetector::poll_event). Time
//! is the count of samples fed so far; a caller that loses packets feeds silence in their
//! place so that time stays right. Each tone yields exactly one [`InbandEvent::Pressed`]
//! as soon as it is confirmed, 32–38 ms after it starts (the IVR acts on it then), and one
//! [`InbandEvent::Released`] when it ends, with its start and duration (for
//! `dtmf detect --json`); the end is known 26–32 ms after the tone stops. Reporting only at
//! the end would give one event instead of two, but would delay every digit by the length
//! of the key press.
//!
//! # How a tone is recognised
//! Audio is cut into blocks of [`BLOCK_SAMPLES`] (6.375 ms). A Goertzel bank runs over each
//! block at the eight Q.23 frequencies and yields each bin's complex value; two adjacent
//! blocks combine exactly into one [`WINDOW_SAMPLES`]-sample analysis window (12.75 ms,
//! bins 78 Hz wide, adjacent rows 0.9 bins apart), so windows overlap by half at no extra
//! cost. A block whose energy is below [`GATE_DBM0`] skips the bank: on a real call most
//! blocks are silence, and those cost one sum of squares.
//!
//! A window is a *candidate* for a key when its strongest row and column bins carry at
//! least [`MIN_TONE_DBM0`] together, beat the other bins of their groups by
//! [`CANDIDATE_RELATIVE_PEAK_DB`], have a plausible twist, and hold at least
//! [`MIN_WINDOW_RATIO`] of the window's power. That ratio is about the fraction of the
//! window the tone covers, which turns window counts into durations.
//!
//! A key is *pressed* when a run of candidate windows for it — gaps of fewer than
//! [`END_MISSES`] windows allowed, as for a sounding tone — reaches [`CONFIRM_WINDOWS`], and
//! over the last of them (the oldest left out, as it may be only partly covered):
//! - each tone's frequency, measured from the phase its bin turns from one window to the
//!   next (to about 0.2 %, far finer than the bin width), is within [`MAX_FREQ_DEVIATION`];
//! - the bins beat the other bins of their groups by [`RELATIVE_PEAK_DB`];
//! - solving for the two tones' amplitudes at those frequencies (which undoes the bins'
//!   roll-off off-centre and each tone's leakage into the other's bin), the twist is within
//!   [`MAX_NORMAL_TWIST_DB`] / [`MAX_REVERSE_TWIST_DB`] and the pair holds at least
//!   [`MIN_CONFIRM_RATIO`] of the total power — speech and music spread theirs wider;
//! - the high tone is not the low one's second harmonic ([`MAX_OCTAVE_DEVIATION`]).
//!
//! The key is *released* after [`END_MISSES`] consecutive windows that are not candidates
//! for it; fewer bridge an interruption. Start and end are placed inside the first and last
//! candidate windows by how much of each the tone covered (within about 3 ms).
//!
//! # What that gives, against ITU-T Q.24
//! The `Q24_*` constants are the requirements of issue 3 (Q.24 Table A-1 style); the tests
//! at the bottom check each over hundreds to thousands of seeded signals from
//! [`testsignal`], and `talkoff` checks that speech and music give no digit:
//! - frequency: every key within ±[`Q24_OPERATE_DEVIATION`] at every level is detected
//!   (`every_key_at_every_level_within_operate_deviation`), ±[`Q24_REJECT_DEVIATION`],
//!   ±4.5 % and ±6 % never (`deviation_of_3_5_percent_and_beyond_is_rejected`);
//! - duration: tones of [`Q24_OPERATE_TONE_MS`] are detected (`tones_of_40_ms_are_detected`),
//!   tones of [`Q24_REJECT_TONE_MS`] and shorter never (`tones_of_20_ms_are_rejected`). In
//!   between, measured: up to 23 ms never, 50 % at about 29 ms, from 37 ms always
//!   (`duration_band_edges`);
//! - twist: normal twist (the high group weaker, as line loss makes it) up to
//!   [`Q24_NORMAL_TWIST_DB`] and reverse twist (the high group stronger) up to
//!   [`Q24_REVERSE_TWIST_DB`] are accepted, 12 dB normal and 8 dB reverse rejected
//!   (`twist_*`);
//! - level: [`Q24_MIN_LEVEL_DBM0`] to [`Q24_MAX_LEVEL_DBM0`] (total power of the pair; see
//!   [`DBM0_POWER`]) is detected, [`REJECT_LEVEL_DBM0`] never (`quieter_than_50_dbm0_*`);
//! - white noise [`Q24_SNR_DB`] below the total tone power causes no error
//!   (`white_noise_at_15_db_snr_*`, `all_conditions_at_once_with_noise`);
//! - an interruption shorter than [`Q24_BRIDGED_INTERRUPTION_MS`] leaves one tone
//!   (`an_interruption_under_10_ms_is_one_tone`), and a pause of [`Q24_MIN_PAUSE_MS`]
//!   between two tones of one key gives two digits (`a_40_ms_pause_*`). Measured: gaps up to
//!   16 ms are bridged, from 27 ms they split (`interruption_band_edges`).
//!
//! The bank is the Goertzel recurrence for the eight filters held side by side in arrays,
//! each block's two halves run at once, which the compiler turns into SIMD lanes; the
//! complex output is formed once per block. No allocation after [`InbandDetector::new`].

use std::collections::VecDeque;
use std::time::Duration;

use super::Key;
use crate::media::SAMPLE_RATE;

#[cfg(test)]
mod talkoff;
#[cfg(test)]
pub(crate) mod testsignal;

/// Samples per Goertzel block (6.375 ms at 8 kHz); windows step by this much.
pub const BLOCK_SAMPLES: usize = 51;
/// Samples per analysis window: two blocks (12.75 ms). 102 puts the first null of each row
/// bin close to the next row frequency (73–89 Hz away), the classic DTMF block size.
pub const WINDOW_SAMPLES: usize = 2 * BLOCK_SAMPLES;
/// The bank runs each block as two halves of this many samples (the second padded with one
/// zero sample, which adds nothing to a DFT).
const HALF_BLOCK: usize = BLOCK_SAMPLES.div_ceil(2);

/// ITU-T Q.23 low-group (row) frequencies, Hz.
pub const ROW_HZ: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// ITU-T Q.23 high-group (column) frequencies, Hz.
pub const COL_HZ: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// The keypad: `KEYPAD[row][col]` (Q.23 Figure 1).
pub const KEYPAD: [[Key; 4]; 4] = [
    [Key::D1, Key::D2, Key::D3, Key::A],
    [Key::D4, Key::D5, Key::D6, Key::B],
    [Key::D7, Key::D8, Key::D9, Key::C],
    [Key::Star, Key::D0, Key::Pound, Key::D],
];

/// Mean power (in squared 16-bit sample units) of a 0 dBm0 signal. G.711 puts the μ-law
/// coder's overload point at +3.17 dBm0 for a sine; taking 16-bit full scale (32767) as
/// that point, a 0 dBm0 sine has a peak of 32767·10^(−3.17/20) ≈ 22 748 and an RMS of
/// ≈ 16 085 (the convention of `audio/README.md`; spandsp uses +3.14, the A-law figure).
pub const DBM0_POWER: f32 = 2.5873e8;

/// Blocks below this mean power skip the Goertzel bank (they cannot hold a tone the
/// detector accepts: [`MIN_TONE_DBM0`] is 5 dB above). dBm0.
pub const GATE_DBM0: f32 = -50.0;
/// Least power of the two tones together for a candidate window, dBm0: 9 dB under the
/// quietest tone Q.24 asks us to take ([`Q24_MIN_LEVEL_DBM0`]), so that a window half
/// covered by such a tone (−6 dB) still counts. Quieter tones are rejected.
pub const MIN_TONE_DBM0: f32 = -45.0;
/// Over the confirming windows, the strongest bin of each group must beat the others of its
/// group by this much, dB (spandsp uses 8 dB too). A tone 1.5 % off nominal leaks at most
/// −12.6 dB into its neighbour.
pub const RELATIVE_PEAK_DB: f32 = 8.0;
/// The same for a single candidate window, dB: looser, because a window only partly
/// covered by a tone (its start, end or an interruption) spreads the tone over wider bins.
pub const CANDIDATE_RELATIVE_PEAK_DB: f32 = 3.0;
/// Least number of adjacent candidate pairs among the confirming windows whose phase
/// advances measure the frequency.
const MIN_PHASE_PAIRS: usize = 2;
/// Least fraction of a window's power in its two DTMF bins for a candidate. A tone covering
/// a fraction c of a window gives a ratio of about c, so this counts windows at least half
/// covered, which sets the duration rules ([`CONFIRM_WINDOWS`], [`END_MISSES`]).
pub const MIN_WINDOW_RATIO: f32 = 0.5;
/// Least fraction of the power in the two tones over the confirming windows, after undoing
/// the bin roll-off and the tones' leakage into each other's bins. A clean tone gives ≈ 1.0,
/// one at 15 dB SNR 0.97; a chord of three equal notes 0.67, speech and sawtooth waves whose
/// harmonics fall on a row and a column (measured in the talk-off tests) 0.55–0.86.
pub const MIN_CONFIRM_RATIO: f32 = 0.9;
/// Largest relative frequency deviation of either tone, measured over the confirming
/// windows: midway between Q.24's operate (1.5 %) and non-operate (3.5 %) limits.
pub const MAX_FREQ_DEVIATION: f32 = 0.025;
/// A pair whose high tone is within this relative distance of twice the low tone is a sound
/// and its second harmonic (a sawtooth, a plucked string and its octave), not a key press.
/// Three keys have a column just 4.3 % under twice their row (1336/697, 1477/770,
/// 1633/852 ≈ 1.917), so with both tones 2.5 % off such a pair passes the frequency check;
/// a real key press within Q.24's ±1.5 % stays at least 1.2 % away from an exact octave.
pub const MAX_OCTAVE_DEVIATION: f32 = 0.008;
/// Largest normal twist (high group weaker than low), dB: between Q.24's 8 dB (accept) and
/// the 12 dB we test for rejection.
pub const MAX_NORMAL_TWIST_DB: f32 = 10.0;
/// Largest reverse twist (high group stronger than low), dB: between Q.24's 4 dB (accept)
/// and the 8 dB we test for rejection.
pub const MAX_REVERSE_TWIST_DB: f32 = 6.0;
/// Twist limits for a single candidate window, dB: looser by the worst bin roll-off of a
/// tone 1.5 % off (1.45 dB at 1633 Hz) plus margin, since the frequency is not known yet.
const CANDIDATE_TWIST_MARGIN_DB: f32 = 4.0;
/// Candidate windows that confirm a key. A tone of T samples has about T/51 windows at
/// least half covered, so 5 windows need at least 25.5 ms; the confirming checks, which
/// leave out the first window, make them certain from 37 ms (Q.24: detect 40 ms, reject
/// 20 ms).
pub const CONFIRM_WINDOWS: usize = 5;
/// Consecutive non-candidate windows that end a tone (or a run not yet confirmed). A gap of
/// g samples spoils about g/51 windows, so 4 windows bridge gaps up to about 19 ms and split
/// from 25.5 ms; measured, 16 ms and 27 ms (Q.24: bridge < 10 ms, split at a 40 ms pause).
pub const END_MISSES: u32 = 4;

/// Q.24: a tone deviating this much (relative) from nominal must be detected.
pub const Q24_OPERATE_DEVIATION: f32 = 0.015;
/// Q.24: a tone deviating this much (relative) or more must not be detected.
pub const Q24_REJECT_DEVIATION: f32 = 0.035;
/// Q.24: tones this long or longer must be detected, ms.
pub const Q24_OPERATE_TONE_MS: u32 = 40;
/// Q.24: tones this long or shorter must not be detected, ms.
pub const Q24_REJECT_TONE_MS: u32 = 20;
/// Q.24: normal twist (high group weaker) to accept, dB.
pub const Q24_NORMAL_TWIST_DB: f32 = 8.0;
/// Q.24: reverse twist (high group stronger) to accept, dB.
pub const Q24_REVERSE_TWIST_DB: f32 = 4.0;
/// Quietest tone pair to detect (total power), dBm0.
pub const Q24_MIN_LEVEL_DBM0: f32 = -36.0;
/// Loudest tone pair to detect (total power), dBm0; the pair's peaks then just fit 16 bits.
pub const Q24_MAX_LEVEL_DBM0: f32 = 0.0;
/// Tones this quiet (total power) must not be detected, dBm0: Q.24 leaves the non-operate
/// level to each administration; ours follows from [`MIN_TONE_DBM0`].
pub const REJECT_LEVEL_DBM0: f32 = -50.0;
/// White noise this far below the total tone power must not cause errors, dB.
pub const Q24_SNR_DB: f32 = 15.0;
/// Q.24: an interruption shorter than this is part of one tone, ms.
pub const Q24_BRIDGED_INTERRUPTION_MS: u32 = 10;
/// Q.24: two tones separated by a pause this long are two digits, ms.
pub const Q24_MIN_PAUSE_MS: u32 = 40;

/// Samples per millisecond at [`SAMPLE_RATE`].
const SAMPLES_PER_MS: u64 = SAMPLE_RATE as u64 / 1000;
/// Room for events waiting for [`InbandDetector::poll_event`] made up front (a caller polls
/// after every frame, which yields at most a few; more only costs an allocation).
const EVENT_QUEUE: usize = 8;

/// What the detector reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InbandEvent {
    /// A tone was confirmed as a key press. Exactly once per tone, 32–38 ms after it
    /// started: act on the digit now.
    Pressed { key: Key, start_sample: u64 },
    /// The tone of the preceding [`Pressed`](InbandEvent::Pressed) has ended (or the stream
    /// was [finished](InbandDetector::finish) during it).
    Released(InbandDigit),
}

/// One detected key press on the sample clock (samples fed since the detector was made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InbandDigit {
    pub key: Key,
    /// First sample of the tone, estimated to within a few samples.
    pub start_sample: u64,
    /// Length of the tone in samples, including bridged interruptions.
    pub duration_samples: u64,
}

impl InbandDigit {
    /// Start of the tone in milliseconds from the start of the stream.
    pub fn start_ms(&self) -> u64 {
        self.start_sample / SAMPLES_PER_MS
    }

    /// Duration of the tone in whole milliseconds (rounded).
    pub fn duration_ms(&self) -> u64 {
        (self.duration_samples + SAMPLES_PER_MS / 2) / SAMPLES_PER_MS
    }
}

/// The duration of `samples` samples at [`SAMPLE_RATE`], to place sample times on a clock.
pub fn samples_to_duration(samples: u64) -> Duration {
    Duration::from_nanos(samples * 1_000_000_000 / SAMPLE_RATE as u64)
}

/// The row and column (indices into [`ROW_HZ`], [`COL_HZ`]) of a key.
pub fn key_tones(key: Key) -> (usize, usize) {
    for (r, row) in KEYPAD.iter().enumerate() {
        for (c, &k) in row.iter().enumerate() {
            if k == key {
                return (r, c);
            }
        }
    }
    unreachable!("KEYPAD holds all 16 keys")
}

/// Finds DTMF key presses in 8 kHz linear PCM (see the module docs for the rules).
#[derive(Clone, Debug)]
pub struct InbandDetector {
    bank: Bank,
    /// The block being filled, and one zero sample that pads it to two halves.
    buf: [f32; BLOCK_SAMPLES + 1],
    fill: usize,
    /// Blocks completed so far.
    blocks: u64,
    /// The last completed block: the first half of the next window.
    prev_block: Option<BlockBins>,
    /// The candidate windows for one key so far (see [`Run`]).
    run: Run,
    /// The confirmed tone now sounding.
    active: Option<Active>,
    events: VecDeque<InbandEvent>,
}

impl InbandDetector {
    pub fn new() -> Self {
        InbandDetector {
            bank: Bank::new(),
            buf: [0.0; BLOCK_SAMPLES + 1],
            fill: 0,
            blocks: 0,
            prev_block: None,
            run: Run::default(),
            active: None,
            events: VecDeque::with_capacity(EVENT_QUEUE),
        }
    }

    /// Feeds the next `samples` of the stream (any length, including 0).
    pub fn handle_samples(&mut self, samples: &[i16]) {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (BLOCK_SAMPLES - self.fill).min(rest.len());
            for (dst, &src) in self.buf[self.fill..self.fill + take].iter_mut().zip(rest) {
                *dst = f32::from(src);
            }
            self.fill += take;
            rest = &rest[take..];
            if self.fill == BLOCK_SAMPLES {
                self.fill = 0;
                self.end_block();
            }
        }
    }

    /// Ends the stream: the audio still buffered is completed with silence and analysed, and
    /// a tone still sounding is released. The detector can then be fed again (time goes on).
    pub fn finish(&mut self) {
        let pad = [0i16; WINDOW_SAMPLES];
        let left = (BLOCK_SAMPLES - self.fill) % BLOCK_SAMPLES;
        self.handle_samples(&pad[..left + BLOCK_SAMPLES]);
        if let Some(active) = self.active.take() {
            self.release(active);
        }
        self.run = Run::default();
    }

    /// The next event, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<InbandEvent> {
        self.events.pop_front()
    }

    /// Whether a tone is sounding or being weighed as one: what the mixer keeps out of a
    /// meeting (a key press must not be heard by the others), before and after it is
    /// confirmed as a digit. Two candidate windows in a row (about 19 ms of tone) make a
    /// suspicion: one alone is common in speech, and muting on it would chop voices.
    pub fn tone_suspected(&self) -> bool {
        self.active.is_some() || self.run.len >= 2
    }

    /// Samples fed so far: the detector's clock.
    pub fn position(&self) -> u64 {
        self.blocks * BLOCK_SAMPLES as u64 + self.fill as u64
    }

    /// A block is complete in `buf`: run the bank (unless it is quiet) and the window it ends.
    fn end_block(&mut self) {
        let energy = energy(&self.buf);
        let block = if energy < self.bank.gate_energy {
            BlockBins::silent(energy)
        } else {
            self.bank.run(&self.buf, energy)
        };
        self.blocks += 1;
        if let Some(prev) = self.prev_block.replace(block) {
            let hit = self.analyse_window(&prev, &block, self.blocks - 2);
            self.on_window(hit);
        }
    }

    /// Combines two blocks into one window and classifies it.
    fn analyse_window(&self, a: &BlockBins, b: &BlockBins, index: u64) -> Option<Hit> {
        if a.silent && b.silent {
            return None;
        }
        let bank = &self.bank;
        let mut bins = Bins::default();
        for f in 0..8 {
            // X = A + e^{−jω·BLOCK}·B: B's phase reference moved to the window start.
            bins.re[f] = a.re[f] + bank.shift_re[f] * b.re[f] - bank.shift_im[f] * b.im[f];
            bins.im[f] = a.im[f] + bank.shift_re[f] * b.im[f] + bank.shift_im[f] * b.re[f];
        }
        let power = (a.energy + b.energy) / WINDOW_SAMPLES as f32;
        if power < bank.min_tone_power {
            return None;
        }
        let mut p = [0.0f32; 8];
        for (f, p) in p.iter_mut().enumerate() {
            *p = bins.power(f);
        }
        let row = argmax(&p[..4]);
        let col = 4 + argmax(&p[4..]);
        let (p_row, p_col) = (p[row], p[col]);
        if p_row + p_col < bank.min_tone_power || p_row + p_col < MIN_WINDOW_RATIO * power {
            return None;
        }
        if !dominates(&p[..4], row, bank.candidate_peak)
            || !dominates(&p[4..], col - 4, bank.candidate_peak)
        {
            return None;
        }
        let twist = p_col / p_row;
        if twist > bank.candidate_reverse_twist || twist < bank.candidate_normal_twist {
            return None;
        }
        Some(Hit {
            key: KEYPAD[row][col - 4],
            row,
            col,
            index,
            linked: false,
            power,
            p,
            x_row: bins.bin(row),
            x_col: bins.bin(col),
        })
    }

    /// Advances the tone state machine by one window.
    fn on_window(&mut self, hit: Option<Hit>) {
        if let Some(active) = &mut self.active {
            match &hit {
                Some(h) if h.key == active.key => {
                    active.misses = 0;
                    active.end = h.start() + (WINDOW_SAMPLES as f32 * active.coverage(h)) as u64;
                }
                _ => {
                    active.misses += 1;
                    if active.misses >= END_MISSES {
                        let active = self.active.take().expect("checked above");
                        self.release(active);
                    }
                }
            }
        }
        let Some(hit) = hit else {
            self.run.miss();
            return;
        };
        self.run.push(hit);
        if self.active.is_some() || self.run.len < CONFIRM_WINDOWS {
            return;
        }
        // END_MISSES < CONFIRM_WINDOWS: a tone for another key has always ended by now.
        if let Some(tone) = self.confirm() {
            let first = self.run.first.expect("run is not empty");
            let start = first.start()
                + (WINDOW_SAMPLES as f32 * (1.0 - tone.coverage(&first))).max(0.0) as u64;
            let last = self.run.last();
            let end = last.start() + (WINDOW_SAMPLES as f32 * tone.coverage(last)) as u64;
            let active = Active {
                start,
                end: end.max(start),
                ..tone
            };
            self.emit(InbandEvent::Pressed {
                key: active.key,
                start_sample: active.start,
            });
            self.active = Some(active);
        }
    }

    /// Applies the confirmation rules to the last [`CONFIRM_WINDOWS`] windows of the run.
    ///
    /// The oldest of those windows may be only partly covered by the tone, so powers are
    /// summed over the others. Each tone leaks into the other's bin through the window's
    /// sidelobes (−21 dB from 941 Hz into 1209 Hz, which with 12 dB of twist would move the
    /// weaker tone by ±3 dB), and a tone off nominal loses power in its own bin; both are
    /// undone by solving for the two tones' complex amplitudes at their measured
    /// frequencies, a 2×2 linear system per window.
    fn confirm(&self) -> Option<Active> {
        let w = self.run.recent();
        let newest = &w[CONFIRM_WINDOWS - 1];
        let (row, col) = (newest.row, newest.col);
        let bank = &self.bank;

        let mut p = [0.0f32; 8];
        let mut power = 0.0;
        for h in &w[1..] {
            for (sum, q) in p.iter_mut().zip(&h.p) {
                *sum += q;
            }
            power += h.power;
        }
        if !dominates(&p[..4], row, bank.relative_peak)
            || !dominates(&p[4..], col - 4, bank.relative_peak)
        {
            return None;
        }
        if w[1..].iter().filter(|h| h.linked).count() < MIN_PHASE_PAIRS {
            return None;
        }

        // Frequency offsets (rad/sample) from the raw bins, then once more from the
        // amplitudes with the leakage removed.
        let (shift_r, shift_c) = (bank.shift(row), bank.shift(col));
        let mut d_row = phase_advance(&w, shift_r, |h| h.x_row).arg() / BLOCK_SAMPLES as f32;
        let mut d_col = phase_advance(&w, shift_c, |h| h.x_col).arg() / BLOCK_SAMPLES as f32;
        let mut amps = bank.tone_amplitudes(&w, row, col, d_row, d_col);
        d_row = phase_advance(&amps, shift_r, |a| a.0).arg() / BLOCK_SAMPLES as f32;
        d_col = phase_advance(&amps, shift_c, |a| a.1).arg() / BLOCK_SAMPLES as f32;
        let dev_row = d_row / bank.omega[row];
        let dev_col = d_col / bank.omega[col];
        if dev_row.abs() > MAX_FREQ_DEVIATION || dev_col.abs() > MAX_FREQ_DEVIATION {
            return None;
        }
        amps = bank.tone_amplitudes(&w, row, col, d_row, d_col);

        // A sine of complex amplitude a (x = a·e^{jωn} + conj) has mean power 2|a|².
        let (mut p_row, mut p_col) = (0.0, 0.0);
        for a in &amps[1..] {
            p_row += 2.0 * a.0.norm_sqr();
            p_col += 2.0 * a.1.norm_sqr();
        }
        let twist = p_col / p_row;
        if twist > bank.reverse_twist || twist < bank.normal_twist {
            return None;
        }
        if p_row + p_col < MIN_CONFIRM_RATIO * power {
            return None;
        }
        // A sound and its octave: the high tone is the low one's second harmonic.
        let octave = (bank.omega[col] + d_col) / (2.0 * (bank.omega[row] + d_row));
        if (octave - 1.0).abs() < MAX_OCTAVE_DEVIATION {
            return None;
        }
        Some(Active {
            key: newest.key,
            start: 0,
            end: 0,
            misses: 0,
            row: row as u8,
            col: col as u8,
            row_gain: window_gain(d_row),
            col_gain: window_gain(d_col),
        })
    }

    fn release(&mut self, active: Active) {
        self.emit(InbandEvent::Released(InbandDigit {
            key: active.key,
            start_sample: active.start,
            duration_samples: active.end - active.start,
        }));
    }

    fn emit(&mut self, event: InbandEvent) {
        self.events.push_back(event);
    }
}

impl Default for InbandDetector {
    fn default() -> Self {
        Self::new()
    }
}

/// The eight Goertzel filters, as constants laid out for SIMD.
#[derive(Clone, Debug)]
struct Bank {
    /// ω per filter, rad/sample.
    omega: [f32; 8],
    /// 2·cos ω per filter.
    coef: [f32; 8],
    /// e^{−jω(H−1)} and e^{−jωH} (H = [`HALF_BLOCK`]): turn a half block's final Goertzel
    /// state into its DFT bin Σ x[n]·e^{−jωn}, and move the second half's phase reference
    /// to the block start.
    half_last_re: [f32; 8],
    half_last_im: [f32; 8],
    half_shift_re: [f32; 8],
    half_shift_im: [f32; 8],
    /// e^{−jωN} (N = [`BLOCK_SAMPLES`]): moves the second block's phase reference to the
    /// window start.
    shift_re: [f32; 8],
    shift_im: [f32; 8],
    /// [`GATE_DBM0`] as a block energy (sum of squares).
    gate_energy: f32,
    /// [`MIN_TONE_DBM0`] as a mean power.
    min_tone_power: f32,
    /// The dB limits as power ratios.
    relative_peak: f32,
    candidate_peak: f32,
    reverse_twist: f32,
    normal_twist: f32,
    candidate_reverse_twist: f32,
    candidate_normal_twist: f32,
}

impl Bank {
    fn new() -> Self {
        let mut bank = Bank {
            omega: [0.0; 8],
            coef: [0.0; 8],
            half_last_re: [0.0; 8],
            half_last_im: [0.0; 8],
            half_shift_re: [0.0; 8],
            half_shift_im: [0.0; 8],
            shift_re: [0.0; 8],
            shift_im: [0.0; 8],
            gate_energy: dbm0_to_power(GATE_DBM0) * BLOCK_SAMPLES as f32,
            min_tone_power: dbm0_to_power(MIN_TONE_DBM0),
            relative_peak: db_to_ratio(RELATIVE_PEAK_DB),
            candidate_peak: db_to_ratio(CANDIDATE_RELATIVE_PEAK_DB),
            reverse_twist: db_to_ratio(MAX_REVERSE_TWIST_DB),
            normal_twist: db_to_ratio(-MAX_NORMAL_TWIST_DB),
            candidate_reverse_twist: db_to_ratio(MAX_REVERSE_TWIST_DB + CANDIDATE_TWIST_MARGIN_DB),
            candidate_normal_twist: db_to_ratio(-MAX_NORMAL_TWIST_DB - CANDIDATE_TWIST_MARGIN_DB),
        };
        for (f, hz) in ROW_HZ.iter().chain(&COL_HZ).enumerate() {
            let w = 2.0 * std::f64::consts::PI * f64::from(*hz) / f64::from(SAMPLE_RATE);
            let n = BLOCK_SAMPLES as f64;
            bank.omega[f] = w as f32;
            bank.coef[f] = (2.0 * w.cos()) as f32;
            let h = HALF_BLOCK as f64;
            bank.half_last_re[f] = (w * (h - 1.0)).cos() as f32;
            bank.half_last_im[f] = -(w * (h - 1.0)).sin() as f32;
            bank.half_shift_re[f] = (w * h).cos() as f32;
            bank.half_shift_im[f] = -(w * h).sin() as f32;
            bank.shift_re[f] = (w * n).cos() as f32;
            bank.shift_im[f] = -(w * n).sin() as f32;
        }
        bank
    }

    /// e^{−jω·BLOCK} for filter `f`.
    fn shift(&self, f: usize) -> Complex {
        Complex::new(self.shift_re[f], self.shift_im[f])
    }

    /// The complex amplitudes (a, b) of the row and column tones in each window, taking
    /// them at `d_row`, `d_col` rad/sample off their bins: the bins are
    /// X_row = a·D(ω_r' − ω_r) + b·D(ω_c' − ω_r) and X_col = a·D(ω_r' − ω_c) + b·D(ω_c' − ω_c)
    /// with D the window's response ([`dirichlet`]); negative-frequency images are ≤ −34 dB
    /// and ignored.
    fn tone_amplitudes(
        &self,
        windows: &[Hit; CONFIRM_WINDOWS],
        row: usize,
        col: usize,
        d_row: f32,
        d_col: f32,
    ) -> [Amplitudes; CONFIRM_WINDOWS] {
        let (w_row, w_col) = (self.omega[row] + d_row, self.omega[col] + d_col);
        let m11 = dirichlet(d_row);
        let m12 = dirichlet(w_col - self.omega[row]);
        let m21 = dirichlet(w_row - self.omega[col]);
        let m22 = dirichlet(d_col);
        let det = m11.mul(m22).sub(m12.mul(m21));
        windows.map(|h| {
            let a = m22.mul(h.x_row).sub(m12.mul(h.x_col)).div(det);
            let b = m11.mul(h.x_col).sub(m21.mul(h.x_row)).div(det);
            Amplitudes(a, b, h.linked)
        })
    }

    /// The eight DFT bins of one block. Each half of the block runs its own Goertzel
    /// recurrence, s[n] = x[n] + 2cos ω·s[n−1] − s[n−2], whose end state gives the half's
    /// bin X = e^{−jω(H−1)}·s[H−1] − e^{−jωH}·s[H−2]; the second half's is turned by
    /// e^{−jωH} and added. Two halves make sixteen independent recurrences per sample
    /// instead of eight, which hides the latency of each. Not inlined: inside
    /// `handle_samples` the loop ran out of SIMD registers and spilled to the stack
    /// (measured: a tone frame took 590 ns instead of 413 ns).
    #[inline(never)]
    fn run(&self, block: &[f32; BLOCK_SAMPLES + 1], energy: f32) -> BlockBins {
        let (first, second) = block.split_at(HALF_BLOCK);
        let mut a1 = [0.0f32; 8];
        let mut a2 = [0.0f32; 8];
        let mut b1 = [0.0f32; 8];
        let mut b2 = [0.0f32; 8];
        for (&x, &y) in first.iter().zip(second) {
            for f in 0..8 {
                let s = (x - a2[f]) + self.coef[f] * a1[f];
                a2[f] = a1[f];
                a1[f] = s;
                let s = (y - b2[f]) + self.coef[f] * b1[f];
                b2[f] = b1[f];
                b1[f] = s;
            }
        }
        let mut out = BlockBins {
            re: [0.0; 8],
            im: [0.0; 8],
            energy,
            silent: false,
        };
        for f in 0..8 {
            let last = Complex::new(self.half_last_re[f], self.half_last_im[f]);
            let shift = Complex::new(self.half_shift_re[f], self.half_shift_im[f]);
            let xa = last.scale(a1[f]).sub(shift.scale(a2[f]));
            let xb = last.scale(b1[f]).sub(shift.scale(b2[f]));
            let x = xa.add(shift.mul(xb));
            out.re[f] = x.re;
            out.im[f] = x.im;
        }
        out
    }
}

/// One block's bins and energy (sum of squares).
#[derive(Clone, Copy, Debug)]
struct BlockBins {
    re: [f32; 8],
    im: [f32; 8],
    energy: f32,
    /// Below the gate: the bank did not run and the bins are zero.
    silent: bool,
}

impl BlockBins {
    fn silent(energy: f32) -> Self {
        BlockBins {
            re: [0.0; 8],
            im: [0.0; 8],
            energy,
            silent: true,
        }
    }
}

/// One window's eight complex bins.
#[derive(Clone, Copy, Debug, Default)]
struct Bins {
    re: [f32; 8],
    im: [f32; 8],
}

impl Bins {
    fn bin(&self, f: usize) -> Complex {
        Complex::new(self.re[f], self.im[f])
    }

    /// Mean power of the tone bin `f` holds: a sine of amplitude A at the bin's frequency
    /// gives |X| = A·W/2, and its power is A²/2 = 2|X|²/W².
    fn power(&self, f: usize) -> f32 {
        const SCALE: f32 = 2.0 / (WINDOW_SAMPLES * WINDOW_SAMPLES) as f32;
        (self.re[f] * self.re[f] + self.im[f] * self.im[f]) * SCALE
    }
}

/// A candidate window.
#[derive(Clone, Copy, Debug)]
struct Hit {
    key: Key,
    /// Strongest row and column bins (0–3 and 4–7).
    row: usize,
    col: usize,
    /// Window number: the window starts at `index · BLOCK_SAMPLES`.
    index: u64,
    /// The previous window is in the same run, so the phase advances are meaningful.
    linked: bool,
    /// Mean power of the whole window.
    power: f32,
    /// Power in each bin (not corrected for roll-off).
    p: [f32; 8],
    /// The row and column bins, phase referenced to the window start.
    x_row: Complex,
    x_col: Complex,
}

impl Hit {
    /// First sample of the window.
    fn start(&self) -> u64 {
        self.index * BLOCK_SAMPLES as u64
    }
}

/// Candidate windows for one key, consecutive but for gaps of fewer than [`END_MISSES`].
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    first: Option<Hit>,
    /// Ring of the last [`CONFIRM_WINDOWS`] windows; `len` counts the whole run.
    recent: [Option<Hit>; CONFIRM_WINDOWS],
    len: usize,
    /// Non-candidate windows since the last one.
    misses: u32,
}

impl Run {
    /// Adds a window; a window for another key starts a new run.
    fn push(&mut self, mut hit: Hit) {
        if self.first.is_some_and(|f| f.key != hit.key) {
            *self = Run::default();
        }
        hit.linked = self.len > 0 && self.last().index + 1 == hit.index;
        self.first.get_or_insert(hit);
        self.recent[self.len % CONFIRM_WINDOWS] = Some(hit);
        self.len += 1;
        self.misses = 0;
    }

    /// A window that is no candidate: bridged, or the end of the run.
    fn miss(&mut self) {
        if self.len == 0 {
            return;
        }
        self.misses += 1;
        if self.misses >= END_MISSES {
            *self = Run::default();
        }
    }

    fn last(&self) -> &Hit {
        self.recent[(self.len + CONFIRM_WINDOWS - 1) % CONFIRM_WINDOWS]
            .as_ref()
            .expect("run is not empty")
    }

    /// The last [`CONFIRM_WINDOWS`] windows, oldest first (the run must be that long).
    fn recent(&self) -> [Hit; CONFIRM_WINDOWS] {
        std::array::from_fn(|i| {
            self.recent[(self.len + i) % CONFIRM_WINDOWS].expect("run holds CONFIRM_WINDOWS")
        })
    }
}

/// A confirmed tone.
#[derive(Clone, Copy, Debug)]
struct Active {
    key: Key,
    row: u8,
    col: u8,
    start: u64,
    /// Estimated end (exclusive) from the last candidate window.
    end: u64,
    misses: u32,
    /// Window power gain at the measured frequencies (≤ 1), to undo the roll-off.
    row_gain: f32,
    col_gain: f32,
}

impl Active {
    /// The fraction of `hit`'s window this tone covers, estimated from its power ratio.
    fn coverage(&self, hit: &Hit) -> f32 {
        let (r, c) = (usize::from(self.row), usize::from(self.col));
        ((hit.p[r] / self.row_gain + hit.p[c] / self.col_gain) / hit.power).min(1.0)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Complex {
    re: f32,
    im: f32,
}

impl Complex {
    fn new(re: f32, im: f32) -> Complex {
        Complex { re, im }
    }

    fn add(self, o: Complex) -> Complex {
        Complex::new(self.re + o.re, self.im + o.im)
    }

    fn sub(self, o: Complex) -> Complex {
        Complex::new(self.re - o.re, self.im - o.im)
    }

    fn mul(self, o: Complex) -> Complex {
        Complex::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }

    fn conj(self) -> Complex {
        Complex::new(self.re, -self.im)
    }

    fn scale(self, k: f32) -> Complex {
        Complex::new(self.re * k, self.im * k)
    }

    fn norm_sqr(self) -> f32 {
        self.re * self.re + self.im * self.im
    }

    fn div(self, o: Complex) -> Complex {
        self.mul(o.conj()).scale(1.0 / o.norm_sqr())
    }

    fn arg(self) -> f32 {
        self.im.atan2(self.re)
    }
}

/// Σ z_i·conj(z_{i−1})·shift over the adjacent pairs of `windows` (a pair is adjacent when
/// the later window is `linked`). With `shift` = e^{−jω·BLOCK} its angle is the phase a tone
/// turns in one block beyond what the nominal ω turns: (ω' − ω)·[`BLOCK_SAMPLES`]. Summing
/// the products weighs each pair by its magnitudes.
fn phase_advance<T>(windows: &[T], shift: Complex, z: impl Fn(&T) -> Complex) -> Complex
where
    T: Linked,
{
    let mut sum = Complex::default();
    for i in 1..windows.len() {
        if windows[i].linked() {
            sum = sum.add(z(&windows[i]).mul(z(&windows[i - 1]).conj()).mul(shift));
        }
    }
    sum
}

/// Whether an item of a run follows the previous one without a gap.
trait Linked {
    fn linked(&self) -> bool;
}

impl Linked for Hit {
    fn linked(&self) -> bool {
        self.linked
    }
}

/// The two tone amplitudes of one window, and whether it follows its predecessor.
#[derive(Clone, Copy, Debug)]
struct Amplitudes(Complex, Complex, bool);

impl Linked for Amplitudes {
    fn linked(&self) -> bool {
        self.2
    }
}

/// Σ_{n<W} e^{jθn} for the window length W = [`WINDOW_SAMPLES`]: the window's response at
/// θ rad/sample from a bin, phase referenced to the window start.
fn dirichlet(theta: f32) -> Complex {
    let w = WINDOW_SAMPLES as f32;
    let half = (0.5 * theta).sin();
    if half.abs() < 1e-6 {
        return Complex::new(w, 0.0);
    }
    let mag = (0.5 * w * theta).sin() / half;
    let phase = 0.5 * (w - 1.0) * theta;
    Complex::new(mag * phase.cos(), mag * phase.sin())
}

/// Power gain of the window for a tone `d` rad/sample off its bin (1 on the bin).
fn window_gain(d: f32) -> f32 {
    let w = WINDOW_SAMPLES as f32;
    (dirichlet(d).norm_sqr() / (w * w)).max(1e-3)
}

/// Sum of squares, in four lanes so the compiler may vectorise it.
fn energy(block: &[f32; BLOCK_SAMPLES + 1]) -> f32 {
    let mut acc = [0.0f32; 4];
    let mut chunks = block.chunks_exact(4);
    for c in &mut chunks {
        for i in 0..4 {
            acc[i] += c[i] * c[i];
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
    acc.iter().sum::<f32>() + tail
}

/// Whether `group[best]` beats every other entry by the power ratio `margin`.
fn dominates(group: &[f32], best: usize, margin: f32) -> bool {
    group
        .iter()
        .enumerate()
        .all(|(i, &q)| i == best || q * margin <= group[best])
}

fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for i in 1..p.len() {
        if p[i] > p[best] {
            best = i;
        }
    }
    best
}

fn db_to_ratio(db: f32) -> f32 {
    10f32.powf(db / 10.0)
}

/// Mean power of a signal at `dbm0`.
pub fn dbm0_to_power(dbm0: f32) -> f32 {
    DBM0_POWER * db_to_ratio(dbm0)
}

#[cfg(test)]
mod tests {
    use super::testsignal::{Conditions, Rng, Signal, digit_string, noise};
    use super::*;
    use crate::media::{Codec, g711};

    /// Runs a detector over `pcm` in 20 ms frames, checks that every `Pressed` is followed
    /// by the matching `Released`, and returns the digits.
    fn detect(pcm: &[i16]) -> Vec<InbandDigit> {
        detect_in_chunks(pcm, 160)
    }

    fn detect_in_chunks(pcm: &[i16], chunk: usize) -> Vec<InbandDigit> {
        let mut det = InbandDetector::new();
        let mut pressed = None;
        let mut out = Vec::new();
        let mut drain = |det: &mut InbandDetector| {
            while let Some(ev) = det.poll_event() {
                match ev {
                    InbandEvent::Pressed { key, start_sample } => {
                        assert_eq!(pressed, None, "two presses without a release");
                        assert!(start_sample <= det.position());
                        pressed = Some((key, start_sample));
                    }
                    InbandEvent::Released(d) => {
                        assert_eq!(pressed.take(), Some((d.key, d.start_sample)));
                        out.push(d);
                    }
                }
            }
        };
        for piece in pcm.chunks(chunk) {
            det.handle_samples(piece);
            drain(&mut det);
        }
        det.finish();
        drain(&mut det);
        assert_eq!(pressed, None, "finish releases the tone");
        out
    }

    /// Detection against the truth, summed over many signals.
    #[derive(Debug, Default)]
    struct Score {
        tones: usize,
        /// Tones reported once, with the right key.
        hits: usize,
        /// Digits reported that match no tone (wrong key, split tones, inventions).
        false_digits: usize,
        /// Worst start and duration error over the hits, ms.
        worst_start_ms: f64,
        worst_duration_ms: f64,
    }

    impl Score {
        fn add(&mut self, sig: &Signal, got: &[InbandDigit]) {
            self.tones += sig.tones.len();
            let mut used = vec![false; got.len()];
            for t in &sig.tones {
                let t_start = t.start as f64 / 8.0;
                let found = got.iter().enumerate().find(|(i, d)| {
                    !used[*i]
                        && d.key == t.key
                        && (d.start_sample as f64 / 8.0 - t_start).abs() < 15.0
                });
                if let Some((i, d)) = found {
                    used[i] = true;
                    self.hits += 1;
                    let start_err = (d.start_sample as f64 - t.start as f64).abs() / 8.0;
                    let dur_err = (d.duration_samples as f64 - t.len as f64).abs() / 8.0;
                    self.worst_start_ms = self.worst_start_ms.max(start_err);
                    self.worst_duration_ms = self.worst_duration_ms.max(dur_err);
                }
            }
            self.false_digits += used.iter().filter(|u| !**u).count();
        }

        fn misses(&self) -> usize {
            self.tones - self.hits
        }

        fn report(&self, what: &str) {
            eprintln!(
                "{what}: {} tones, {} detected, {} missed, {} false; worst start error {:.1} ms, \
                 duration error {:.1} ms",
                self.tones,
                self.hits,
                self.misses(),
                self.false_digits,
                self.worst_start_ms,
                self.worst_duration_ms
            );
        }

        /// Every tone found once, nothing else.
        fn assert_exact(&self, what: &str) {
            self.report(what);
            assert!(self.tones > 0);
            assert_eq!(
                (self.misses(), self.false_digits),
                (0, 0),
                "{what}: misses, false digits"
            );
        }

        /// Nothing found at all.
        fn assert_rejected(&self, what: &str) {
            self.report(what);
            assert!(self.tones > 0);
            assert_eq!((self.hits, self.false_digits), (0, 0), "{what}: detections");
        }
    }

    /// All 16 keys in a random order.
    fn shuffled_keys(rng: &mut Rng) -> Vec<Key> {
        let mut keys: Vec<Key> = (0..16).filter_map(Key::from_event_code).collect();
        for i in (1..keys.len()).rev() {
            keys.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        keys
    }

    /// Renders all 16 keys `reps` times under `c` and scores the detector on them.
    fn score_all_keys(score: &mut Score, rng: &mut Rng, c: &Conditions, reps: usize) {
        for _ in 0..reps {
            let keys = shuffled_keys(rng);
            let sig = digit_string(rng, &keys, c);
            score.add(&sig, &detect(&sig.pcm));
        }
    }

    const LEVELS: [f64; 7] = [-36.0, -30.0, -24.0, -18.0, -12.0, -6.0, 0.0];

    #[test]
    fn every_key_at_every_level_within_operate_deviation() {
        let op = f64::from(Q24_OPERATE_DEVIATION);
        let mut rng = Rng::new(100);
        let mut score = Score::default();
        for level in LEVELS {
            for row_deviation in [-op, 0.0, op] {
                for col_deviation in [-op, 0.0, op] {
                    let c = Conditions {
                        level_dbm0: level,
                        row_deviation,
                        col_deviation,
                        tone_ms: (40.0, 100.0),
                        pause_ms: (40.0, 100.0),
                        ..Conditions::default()
                    };
                    score_all_keys(&mut score, &mut rng, &c, 2);
                }
            }
        }
        score.assert_exact("levels -36..0 dBm0 x deviation +-1.5 %");
        assert!(
            score.worst_start_ms <= 3.0,
            "start off by {}",
            score.worst_start_ms
        );
        assert!(
            score.worst_duration_ms <= 6.0,
            "duration off by {}",
            score.worst_duration_ms
        );
    }

    #[test]
    fn deviation_of_3_5_percent_and_beyond_is_rejected() {
        let mut rng = Rng::new(200);
        let mut score = Score::default();
        for dev in [0.035, 0.045, 0.06] {
            for sign in [-1.0, 1.0] {
                for (row_on, col_on) in [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)] {
                    for level in [-30.0, -18.0, -6.0] {
                        let c = Conditions {
                            level_dbm0: level,
                            row_deviation: sign * dev * row_on,
                            col_deviation: sign * dev * col_on,
                            tone_ms: (60.0, 150.0),
                            ..Conditions::default()
                        };
                        score_all_keys(&mut score, &mut rng, &c, 1);
                    }
                }
            }
        }
        score.assert_rejected("deviation +-3.5, 4.5, 6 %");
    }

    #[test]
    fn tones_of_40_ms_are_detected() {
        let op = f64::from(Q24_OPERATE_DEVIATION);
        let mut rng = Rng::new(300);
        let mut score = Score::default();
        for level in LEVELS {
            for (row_deviation, col_deviation) in [(0.0, 0.0), (op, op), (-op, -op), (op, -op)] {
                let c = Conditions {
                    level_dbm0: level,
                    row_deviation,
                    col_deviation,
                    tone_ms: (40.0, 40.0),
                    pause_ms: (40.0, 60.0),
                    ..Conditions::default()
                };
                score_all_keys(&mut score, &mut rng, &c, 2);
            }
        }
        score.assert_exact("40 ms tones");
    }

    #[test]
    fn tones_of_20_ms_are_rejected() {
        let mut rng = Rng::new(400);
        let mut score = Score::default();
        for level in LEVELS {
            for noise in [None, Some(f64::from(Q24_SNR_DB))] {
                let c = Conditions {
                    level_dbm0: level,
                    snr_db: noise,
                    tone_ms: (10.0, 20.0),
                    pause_ms: (40.0, 60.0),
                    ..Conditions::default()
                };
                score_all_keys(&mut score, &mut rng, &c, 3);
            }
        }
        score.assert_rejected("tones of 10-20 ms");
    }

    /// The documented duration band: with or without noise, tones up to 23 ms are never
    /// detected and tones from 37 ms always. (Measured in 1 ms steps, 384 tones each, these
    /// levels, with and without noise: 25 ms 0 %, 26 ms 5 %, 28 ms 30 %, 30 ms 63 %,
    /// 32 ms 89 %, 34 ms 99 %, 36 ms 99.9 %.)
    #[test]
    fn duration_band_edges() {
        let mut rng = Rng::new(500);
        let (mut short, mut long) = (Score::default(), Score::default());
        for level in [-36.0, -20.0, -3.0] {
            for snr_db in [None, Some(f64::from(Q24_SNR_DB))] {
                let c = |ms| Conditions {
                    level_dbm0: level,
                    tone_ms: (ms, ms),
                    snr_db,
                    ..Conditions::default()
                };
                score_all_keys(&mut short, &mut rng, &c(23.0), 4);
                score_all_keys(&mut long, &mut rng, &c(37.0), 4);
            }
        }
        short.assert_rejected("23 ms tones");
        long.assert_exact("37 ms tones");
    }

    /// The documented interruption band: gaps up to 16 ms are bridged, from 27 ms they split
    /// the tone. (Measured in 1 ms steps, 192 tones each: 18 ms 0.5 % split, 19 ms 3 %,
    /// 22 ms 48 %, 25 ms 95 %, 26 ms 99–100 %.)
    #[test]
    fn interruption_band_edges() {
        let mut rng = Rng::new(501);
        for (gap, digits_per_tone) in [(16.0, 1), (27.0, 2)] {
            let (mut tones, mut digits) = (0, 0);
            for level in [-36.0, -20.0, -3.0] {
                for snr_db in [None, Some(f64::from(Q24_SNR_DB))] {
                    let c = Conditions {
                        level_dbm0: level,
                        tone_ms: (150.0, 150.0),
                        dropout_ms: Some(gap),
                        snr_db,
                        ..Conditions::default()
                    };
                    for _ in 0..2 {
                        let keys = shuffled_keys(&mut rng);
                        let sig = digit_string(&mut rng, &keys, &c);
                        tones += sig.tones.len();
                        digits += detect(&sig.pcm).len();
                    }
                }
            }
            eprintln!("interruption of {gap} ms: {tones} tones, {digits} digits");
            assert_eq!(digits, digits_per_tone * tones, "gap of {gap} ms");
        }
    }

    #[test]
    fn twist_up_to_4_db_reverse_and_8_db_normal_is_accepted() {
        let op = f64::from(Q24_OPERATE_DEVIATION);
        let mut rng = Rng::new(600);
        let mut score = Score::default();
        for twist in [
            f64::from(Q24_REVERSE_TWIST_DB),
            -f64::from(Q24_NORMAL_TWIST_DB),
        ] {
            for level in [-36.0, -24.0, -12.0, 0.0] {
                for (row_deviation, col_deviation) in
                    [(0.0, 0.0), (op, op), (-op, -op), (op, -op), (-op, op)]
                {
                    let c = Conditions {
                        level_dbm0: level,
                        twist_db: twist,
                        row_deviation,
                        col_deviation,
                        ..Conditions::default()
                    };
                    score_all_keys(&mut score, &mut rng, &c, 1);
                }
            }
        }
        score.assert_exact("twist +4 / -8 dB");
    }

    #[test]
    fn twist_of_8_db_reverse_or_12_db_normal_is_rejected() {
        let mut rng = Rng::new(700);
        let mut score = Score::default();
        for twist in [8.0, -12.0] {
            for level in [-30.0, -20.0, -10.0, 0.0] {
                let c = Conditions {
                    level_dbm0: level,
                    twist_db: twist,
                    tone_ms: (60.0, 150.0),
                    ..Conditions::default()
                };
                score_all_keys(&mut score, &mut rng, &c, 3);
            }
        }
        score.assert_rejected("twist +8 / -12 dB");
    }

    #[test]
    fn white_noise_at_15_db_snr_causes_no_errors() {
        let mut rng = Rng::new(800);
        let mut score = Score::default();
        for level in LEVELS {
            let c = Conditions {
                level_dbm0: level,
                snr_db: Some(f64::from(Q24_SNR_DB)),
                tone_ms: (40.0, 100.0),
                pause_ms: (40.0, 100.0),
                ..Conditions::default()
            };
            score_all_keys(&mut score, &mut rng, &c, 10);
        }
        score.assert_exact("15 dB SNR");
    }

    /// Everything at once, drawn at random per digit string: level anywhere in −36…0 dBm0,
    /// twist anywhere in −8…+4 dB, each tone anywhere within ±1.5 %, 15 dB SNR, tones and
    /// pauses of 40–100 ms.
    #[test]
    fn all_conditions_at_once_with_noise() {
        let op = f64::from(Q24_OPERATE_DEVIATION);
        let mut rng = Rng::new(850);
        let mut score = Score::default();
        for _ in 0..80 {
            let c = Conditions {
                level_dbm0: rng.range((-36.0, 0.0)),
                twist_db: rng.range((-8.0, 4.0)),
                row_deviation: rng.range((-op, op)),
                col_deviation: rng.range((-op, op)),
                snr_db: Some(f64::from(Q24_SNR_DB)),
                tone_ms: (40.0, 100.0),
                pause_ms: (40.0, 100.0),
                dropout_ms: None,
            };
            score_all_keys(&mut score, &mut rng, &c, 1);
        }
        score.assert_exact("random level, twist, deviation at 15 dB SNR");
    }

    /// In-band digits reach us through G.711: both laws, every level.
    #[test]
    fn through_g711() {
        let mut rng = Rng::new(870);
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut score = Score::default();
            for level in LEVELS {
                let c = Conditions {
                    level_dbm0: level,
                    tone_ms: (40.0, 100.0),
                    pause_ms: (40.0, 100.0),
                    ..Conditions::default()
                };
                for _ in 0..3 {
                    let keys = shuffled_keys(&mut rng);
                    let mut sig = digit_string(&mut rng, &keys, &c);
                    let mut wire = vec![0u8; sig.pcm.len()];
                    g711::encode(codec, &sig.pcm, &mut wire);
                    g711::decode(codec, &wire, &mut sig.pcm);
                    score.add(&sig, &detect(&sig.pcm));
                }
            }
            score.assert_exact(&format!("through {codec:?}"));
        }
    }

    #[test]
    fn noise_alone_gives_no_digits() {
        let mut rng = Rng::new(900);
        let mut seconds = 0.0;
        for dbm0 in [-50.0, -40.0, -30.0, -20.0, -10.0, -3.0] {
            let pcm = noise(&mut rng, dbm0, 20_000.0);
            seconds += pcm.len() as f64 / 8000.0;
            assert_eq!(detect(&pcm), vec![], "white noise at {dbm0} dBm0");
        }
        eprintln!("white noise alone: {seconds} s, 0 digits");
    }

    #[test]
    fn quieter_than_50_dbm0_is_rejected() {
        let mut rng = Rng::new(1000);
        let mut score = Score::default();
        let c = Conditions {
            level_dbm0: f64::from(REJECT_LEVEL_DBM0),
            tone_ms: (60.0, 150.0),
            ..Conditions::default()
        };
        score_all_keys(&mut score, &mut rng, &c, 10);
        score.assert_rejected("-50 dBm0");
    }

    #[test]
    fn an_interruption_under_10_ms_is_one_tone() {
        let mut rng = Rng::new(1100);
        let mut score = Score::default();
        for level in [-36.0, -24.0, -12.0, 0.0] {
            for dropout in [5.0, 8.0, 9.9] {
                let c = Conditions {
                    level_dbm0: level,
                    dropout_ms: Some(dropout),
                    tone_ms: (60.0, 100.0),
                    ..Conditions::default()
                };
                score_all_keys(&mut score, &mut rng, &c, 2);
            }
        }
        score.assert_exact("dropouts of 5-9.9 ms");
    }

    #[test]
    fn a_40_ms_pause_between_two_tones_of_one_key_gives_two_digits() {
        let mut rng = Rng::new(1200);
        let mut score = Score::default();
        for level in [-36.0, -24.0, -12.0, 0.0] {
            for noise in [None, Some(f64::from(Q24_SNR_DB))] {
                let c = Conditions {
                    level_dbm0: level,
                    snr_db: noise,
                    tone_ms: (40.0, 80.0),
                    pause_ms: (40.0, 40.0),
                    ..Conditions::default()
                };
                for _ in 0..5 {
                    let keys: Vec<Key> = shuffled_keys(&mut rng)
                        .into_iter()
                        .flat_map(|k| [k, k])
                        .collect();
                    let sig = digit_string(&mut rng, &keys, &c);
                    score.add(&sig, &detect(&sig.pcm));
                }
            }
        }
        score.assert_exact("same key twice, 40 ms apart");
    }

    #[test]
    fn chunk_size_does_not_change_the_result() {
        let mut rng = Rng::new(1300);
        let c = Conditions {
            snr_db: Some(20.0),
            ..Conditions::default()
        };
        let keys = shuffled_keys(&mut rng);
        let sig = digit_string(&mut rng, &keys, &c);
        let whole = detect_in_chunks(&sig.pcm, sig.pcm.len());
        assert_eq!(whole.len(), 16);
        for chunk in [1, 7, 51, 80, 160, 333] {
            assert_eq!(
                detect_in_chunks(&sig.pcm, chunk),
                whole,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn pressed_comes_early_and_released_after_the_tone() {
        let mut rng = Rng::new(1400);
        let c = Conditions {
            tone_ms: (200.0, 200.0),
            ..Conditions::default()
        };
        let sig = digit_string(&mut rng, &[Key::D7], &c);
        let tone = sig.tones[0];
        let mut det = InbandDetector::new();
        let mut pressed_at = None;
        let mut released = None;
        for frame in sig.pcm.chunks(160) {
            det.handle_samples(frame);
            while let Some(ev) = det.poll_event() {
                match ev {
                    InbandEvent::Pressed { key, .. } => {
                        assert_eq!(key, Key::D7);
                        pressed_at = Some(det.position());
                    }
                    InbandEvent::Released(d) => released = Some((d, det.position())),
                }
            }
        }
        let pressed_at = pressed_at.expect("pressed");
        // Within 40 ms of the tone's start (confirmation at about 32 ms, plus one frame).
        let latency_ms = (pressed_at - tone.start as u64) / SAMPLES_PER_MS;
        assert!(
            latency_ms <= 40 + 20,
            "pressed {latency_ms} ms after the start"
        );
        let (digit, at) = released.expect("released");
        assert!(at >= (tone.start + tone.len) as u64);
        assert!(digit.duration_ms().abs_diff(200) <= 2, "{digit:?}");
        assert_eq!(det.position(), sig.pcm.len() as u64);
    }

    #[test]
    fn finish_releases_a_tone_that_runs_to_the_end() {
        let mut rng = Rng::new(1500);
        let c = Conditions {
            tone_ms: (100.0, 100.0),
            ..Conditions::default()
        };
        let sig = digit_string(&mut rng, &[Key::Pound], &c);
        let t = sig.tones[0];
        let cut = &sig.pcm[..t.start + t.len];
        let mut det = InbandDetector::new();
        det.handle_samples(cut);
        assert!(matches!(
            det.poll_event(),
            Some(InbandEvent::Pressed {
                key: Key::Pound,
                ..
            })
        ));
        assert_eq!(det.poll_event(), None);
        det.finish();
        let Some(InbandEvent::Released(d)) = det.poll_event() else {
            panic!("finish releases")
        };
        assert!((d.duration_ms() as i64 - 100).abs() <= 3, "{d:?}");
    }

    #[test]
    fn keypad_and_key_tones_agree() {
        for code in 0..16 {
            let key = Key::from_event_code(code).unwrap();
            let (r, c) = key_tones(key);
            assert_eq!(KEYPAD[r][c], key);
        }
        assert_eq!(key_tones(Key::D5), (1, 1));
        assert_eq!(key_tones(Key::Pound), (3, 2));
    }

    #[test]
    fn digit_times_in_ms() {
        let d = InbandDigit {
            key: Key::D1,
            start_sample: 963,
            duration_samples: 644,
        };
        assert_eq!((d.start_ms(), d.duration_ms()), (120, 81));
        assert_eq!(samples_to_duration(8000), Duration::from_secs(1));
    }
}
