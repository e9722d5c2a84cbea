#!/usr/bin/env bash
# Regenerates every sound pinbridge plays, into this directory, from text and synthesis
# parameters alone: espeak-ng speaks the prompts, sox makes the tones and the hold music.
#
# Output: 16 kHz mono 16-bit FLAC, one file per `audio::Sound` (stems must match
# `Sound::stem()` in src/audio.rs). The server resamples to 8 kHz at start, so 16 kHz keeps
# a little headroom above the telephone band without making the repository heavy.
#
# Deterministic: sox runs with -R (fixed seeds) and -D (no dither), espeak-ng has no
# randomness, and FLAC carries no time stamp, so the same tool versions give byte-identical
# files. Tested with espeak-ng 1.51 and SoX 14.4.2 (Debian: apt-get install espeak-ng sox
# libsox-fmt-all).
#
# Usage: audio/generate.sh            (from anywhere; writes next to this script)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

readonly RATE=16000
readonly VOICE=en-us
readonly WPM=150       # espeak-ng words per minute; its default, 175, is hurried on a phone
readonly PROMPT_PEAK=-3 # dBFS peak of every spoken prompt
readonly TONE_PEAK=-15  # dBFS peak of the join/leave chimes: a sine is loud for its peak
readonly MUSIC_PEAK=-10 # dBFS peak of the hold music: dense, so this sits just under the voice

for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null || {
        echo "generate.sh: $tool not found (apt-get install espeak-ng sox)" >&2
        exit 1
    }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# sox, repeatable and undithered.
sx() { sox -R -D "$@"; }

# Final encode: mono 16-bit FLAC at $RATE, best compression, no comment block.
readonly FLAC_OUT=(-r "$RATE" -c 1 -b 16 -C 8 --comment "")

# prompt STEM TEXT: speak TEXT, trim the silence espeak-ng leaves around it, band-limit to
# the telephone band, compress gently so quiet syllables survive G.711, peak-normalise, and
# leave 50 ms before and 300 ms after so prompts played back to back do not run together.
prompt() {
    local stem=$1 text=$2
    espeak-ng -v "$VOICE" -s "$WPM" -w "$tmp/$stem.wav" "$text"
    sx "$tmp/$stem.wav" "${FLAC_OUT[@]}" "$stem.flac" \
        silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse \
        highpass 150 lowpass 3600 \
        compand 0.005,0.120 6:-70,-70,-40,-30,-20,-14,0,-8 \
        rate -v "$RATE" \
        norm "$PROMPT_PEAK" \
        pad 0.05 0.3
}

prompt greeting "Welcome to pinbridge."
prompt enter_conference_id "Please enter your conference ID, followed by the pound key."
prompt conference_id_unknown "Sorry, that conference ID was not recognized."
prompt organizer_or_wait "If you are the organizer, press star. Otherwise, please wait."
prompt enter_pin "Please enter your pin, followed by the pound key."
prompt pin_incorrect "Sorry, that pin is not correct."
prompt pin_unavailable "Pin entry is not available right now."
prompt waiting_for_organizer "Please continue to wait. The meeting will start when the organizer joins."
prompt meeting_starting "The meeting is starting."
prompt joined_meeting "You are now in the meeting."
prompt muted "You are muted."
prompt unmuted "You are unmuted."
prompt help "To mute or unmute, press star six. To hear this again, press star one."
prompt meeting_full "Sorry, this meeting is full."
prompt goodbye "Goodbye."

# chime STEM NOTE1 NOTE2: two soft sine notes, 160 ms then 240 ms, each with a 5 ms attack and
# a long half-sine release so neither end clicks. D5/A5 (587/880 Hz) are a fifth apart and
# clear of the DTMF row and column frequencies.
chime() {
    local stem=$1 first=$2 second=$3
    sx -n -r "$RATE" -c 1 "$tmp/$stem-1.wav" synth 0.16 sine "$first" fade h 0.005 0.16 0.12
    sx -n -r "$RATE" -c 1 "$tmp/$stem-2.wav" synth 0.24 sine "$second" fade h 0.005 0.24 0.2
    sx "$tmp/$stem-1.wav" "$tmp/$stem-2.wav" "${FLAC_OUT[@]}" "$stem.flac" norm "$TONE_PEAK"
}

chime join_tone D5 A5
chime leave_tone A5 D5

# Hold music: eight chords of 4 s at 60 beats per minute (32 s, a whole number of 20 ms
# frames at any rate we use), each a plucked bass note, a soft triangle/sine pad that swells
# in and out, and a plucked eighth-note arpeggio. Segments overlap by their decay tails; the
# tail that runs past 32 s is folded back onto the start so the file loops without a seam.
#
# DTMF safety: a digit is one row tone (697–941 Hz) *plus* one column tone (1209–1633 Hz).
# Everything is low-passed to 1050 Hz with a steep FIR, so no column tone survives and a
# detector cannot see a digit however the chord harmonics fall (src/audio.rs tests this).
readonly BAR=4
readonly BARS=8
readonly TAIL=4
readonly EIGHTH=0.5

# chord INDEX BASS "PAD NOTES" "ARPEGGIO NOTES (8)"
chord() {
    local i=$1 bass=$2 pad=$3 arp=$4
    local seg="$tmp/seg$i.wav" len=$((BAR + TAIL))
    local tones=() delays=() n=0 note
    for note in $arp; do
        tones+=(pluck "$note")
        delays+=("$(awk -v n="$n" -v e="$EIGHTH" 'BEGIN { print n * e }')")
        n=$((n + 1))
    done
    local padtones=()
    for note in $pad; do padtones+=(triangle "$note" sine "$note"); done

    sx -n -r "$RATE" -e floating-point -b 32 "$tmp/bass$i.wav" \
        synth "$len" pluck "$bass" pluck "$bass" delay 0 2 remix - vol 0.35
    sx -n -r "$RATE" -e floating-point -b 32 "$tmp/pad$i.wav" \
        synth 5 "${padtones[@]}" remix - fade h 0.8 5 1.6 vol 0.22 pad 0 $((len - 5))
    sx -n -r "$RATE" -e floating-point -b 32 "$tmp/arp$i.wav" \
        synth "$((len - 4))" "${tones[@]}" delay "${delays[@]}" remix - vol 0.5
    sx -m -v 1 "$tmp/bass$i.wav" -v 1 "$tmp/pad$i.wav" -v 1 "$tmp/arp$i.wav" \
        -e floating-point -b 32 "$seg" trim 0 "$len" pad "$((i * BAR))"
}

chord 0 C2 "C3 G3 E4" "C4 E4 G4 B4 D5 B4 G4 E4"
chord 1 A1 "A2 E3 C4" "A3 C4 E4 G4 B4 G4 E4 C4"
chord 2 F2 "F2 C3 A3" "F3 A3 C4 E4 A4 E4 C4 A3"
chord 3 G2 "G2 D3 B3" "G3 B3 D4 E4 G4 E4 D4 B3"
chord 4 E2 "E3 B3 G4" "E4 G4 B4 D5 E5 D5 B4 G4"
chord 5 A1 "A2 E3 C4" "A3 E4 G4 C5 E5 C5 G4 E4"
chord 6 D2 "D3 A3 F4" "D4 F4 A4 C5 E5 C5 A4 F4"
chord 7 G2 "G2 F3 B3" "G3 C4 D4 F4 G4 F4 D4 B3"

readonly LOOP=$((BAR * BARS))
segs=()
for ((i = 0; i < BARS; i++)); do segs+=(-v 1 "$tmp/seg$i.wav"); done
sx -m "${segs[@]}" -e floating-point -b 32 "$tmp/timeline.wav" \
    reverb 40 60 60 100 10 -4 sinc -1050
# Fold everything after $LOOP s (chord tails, reverb) back onto the start.
sx "$tmp/timeline.wav" "$tmp/main.wav" trim 0 "$LOOP"
sx "$tmp/timeline.wav" "$tmp/wrap.wav" trim "$LOOP"
# shellcheck disable=SC2046
sx -m -v 1 "$tmp/main.wav" -v 1 "$tmp/wrap.wav" "${FLAC_OUT[@]}" hold_music.flac \
    trim 0 "$LOOP" norm "$MUSIC_PEAK"

echo "generated: $(ls -1 ./*.flac | wc -l) files, $(du -ch ./*.flac | tail -1 | cut -f1)"
