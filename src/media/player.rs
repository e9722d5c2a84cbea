//! Sounds as calls hear them: a [`Clip`] is decoded and G.711-encoded once at start and then
//! shared by reference (`Arc`) by every call that plays it, so a caller hearing a prompt or
//! hold music costs a frame copy per 20 ms, never a transcode. A [`Playback`] is one call's
//! read position in a clip.

use std::sync::Arc;
use std::time::Duration;

use super::{Codec, FRAME_SAMPLES, Frame, g711};

/// A sound ready to send: 8 kHz mono PCM plus its μ-law and A-law frames.
#[derive(Debug)]
pub struct Clip {
    name: String,
    pcm: Vec<i16>,
    pcmu: Vec<Frame>,
    pcma: Vec<Frame>,
}

impl Clip {
    /// Encodes 8 kHz mono `pcm` into 20 ms frames of both laws; a short last frame is padded
    /// with silence so every frame is whole.
    pub fn from_pcm(name: impl Into<String>, pcm: Vec<i16>) -> Self {
        let mut pcmu = Vec::with_capacity(pcm.len().div_ceil(FRAME_SAMPLES));
        let mut pcma = Vec::with_capacity(pcmu.capacity());
        for chunk in pcm.chunks(FRAME_SAMPLES) {
            let mut padded = [0i16; FRAME_SAMPLES];
            padded[..chunk.len()].copy_from_slice(chunk);
            let mut u = [0u8; FRAME_SAMPLES];
            let mut a = [0u8; FRAME_SAMPLES];
            g711::encode(Codec::Pcmu, &padded, &mut u);
            g711::encode(Codec::Pcma, &padded, &mut a);
            pcmu.push(u);
            pcma.push(a);
        }
        Clip {
            name: name.into(),
            pcm,
            pcmu,
            pcma,
        }
    }

    /// A clip from frames already encoded in both laws (tones, test sounds, frames produced
    /// without going through `g711`). [`Clip::pcm`] is empty for such a clip.
    ///
    /// # Panics
    /// If the two laws hold different numbers of frames: a clip must last as long in either.
    pub fn from_frames(name: impl Into<String>, pcmu: Vec<Frame>, pcma: Vec<Frame>) -> Self {
        assert_eq!(
            pcmu.len(),
            pcma.len(),
            "a clip has as many μ-law frames as A-law frames"
        );
        Clip {
            name: name.into(),
            pcm: Vec::new(),
            pcmu,
            pcma,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 8 kHz mono samples the frames were encoded from (tests compare against these).
    pub fn pcm(&self) -> &[i16] {
        &self.pcm
    }

    pub fn frames(&self, codec: Codec) -> &[Frame] {
        match codec {
            Codec::Pcmu => &self.pcmu,
            Codec::Pcma => &self.pcma,
        }
    }

    pub fn duration(&self) -> Duration {
        super::PTIME * self.pcmu.len() as u32
    }
}

/// Whether a playback stops at the end of its clip or starts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlayMode {
    Once,
    Loop,
}

/// One call's position in a shared clip.
#[derive(Debug, Clone)]
pub struct Playback {
    clip: Arc<Clip>,
    mode: PlayMode,
    next: usize,
}

impl Playback {
    pub fn new(clip: Arc<Clip>, mode: PlayMode) -> Self {
        Playback {
            clip,
            mode,
            next: 0,
        }
    }

    pub fn clip(&self) -> &Arc<Clip> {
        &self.clip
    }

    /// The next 20 ms frame, or `None` once a `Once` playback has run out.
    pub fn next_frame(&mut self, codec: Codec) -> Option<&Frame> {
        let frames = self.clip.frames(codec);
        if frames.is_empty() {
            return None;
        }
        if self.next >= frames.len() {
            match self.mode {
                PlayMode::Once => return None,
                PlayMode::Loop => self.next = 0,
            }
        }
        let frame = &frames[self.next];
        self.next += 1;
        Some(frame)
    }

    /// True once a `Once` playback has sent its last frame.
    pub fn finished(&self) -> bool {
        self.mode == PlayMode::Once && self.next >= self.clip.frames(Codec::Pcmu).len()
    }
}
