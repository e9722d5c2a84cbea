//! `pinbridge dtmf detect FILE [--json]` on real files made with sox, through the real binary.

use std::path::Path;
use std::process::Command;

/// Writes `keys` as 80 ms DTMF tones with 80 ms gaps, at 16 kHz stereo so decoding,
/// down-mixing and resampling are all exercised.
fn dtmf_wav(path: &Path, keys: &str) {
    let pairs = |k: char| match k {
        '1' => (697, 1209),
        '5' => (770, 1336),
        '9' => (852, 1477),
        '#' => (941, 1477),
        other => panic!("no tones for {other}"),
    };
    let dir = path.parent().unwrap();
    let mut parts = Vec::new();
    for (i, k) in keys.chars().enumerate() {
        let (lo, hi) = pairs(k);
        let part = dir.join(format!("part{i}.wav"));
        let status = Command::new("sox")
            .args(["-n", "-r", "16000", "-c", "2"])
            .arg(&part)
            .args([
                "synth",
                "0.08",
                "sine",
                &lo.to_string(),
                "sine",
                &hi.to_string(),
            ])
            .args(["remix", "1,2", "1,2", "vol", "0.3", "pad", "0", "0.08"])
            .status()
            .expect("sox must be installed (apt-get install -y sox)");
        assert!(status.success());
        parts.push(part);
    }
    let status = Command::new("sox")
        .args(&parts)
        .arg(path)
        .status()
        .expect("sox must be installed (apt-get install -y sox)");
    assert!(status.success());
}

fn detect(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pinbridge"))
        .args(["dtmf", "detect"])
        .args(args)
        .output()
        .expect("running pinbridge")
}

#[test]
fn prints_each_digit_with_its_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("keys.wav");
    dtmf_wav(&wav, "159#");
    let out = detect(&[wav.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let keys: String = text.lines().filter_map(|l| l.chars().next()).collect();
    assert_eq!(keys, "159#", "{text}");

    let out = detect(&[wav.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digits = json.as_array().unwrap();
    assert_eq!(digits.len(), 4);
    for (i, (d, key)) in digits.iter().zip(["1", "5", "9", "#"]).enumerate() {
        assert_eq!(d["digit"], key);
        // Each tone starts 160 ms after the previous one and lasts 80 ms (±10 ms).
        let start = d["start_ms"].as_u64().unwrap() as i64;
        let duration = d["duration_ms"].as_u64().unwrap() as i64;
        assert!((start - 160 * i as i64).abs() <= 10, "{d}");
        assert!((duration - 80).abs() <= 10, "{d}");
    }
}

#[test]
fn unreadable_files_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wav");
    let out = detect(&[missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.wav") && err.contains("not found"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.wav");
    std::fs::write(&garbage, b"this is not audio").unwrap();
    let out = detect(&[garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("garbage.wav") && !err.contains("panicked"),
        "{err}"
    );
}
