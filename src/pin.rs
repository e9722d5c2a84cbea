//! PINs: generation (CSPRNG), argon2id + pepper hashing, masking, constant-time verification,
//! and the server pepper.
//!
//! A PIN exists in clear only as a [`Pin`], whose `Debug` and `Display` print `*****`. The
//! store keeps only [`hash`]'s PHC string. Hashing is argon2id keyed with the [`Pepper`]
//! (argon2's secret input, RFC 9106 §3.1 "K"), so a stolen store without the pepper does not
//! allow an offline search of the PIN space.
//!
//! Hashing and verifying cost about 21 ms of one core and 19 MiB each (release build, the
//! 2-core AMD EPYC development machine, 20.3–22.0 ms over three runs of
//! `cargo test --release --lib pin::tests::verify_time -- --ignored --nocapture`): callers run
//! them off the signalling and media paths — calls on the low-priority
//! [`crate::pin_checks`] threads, the admin API on tokio's blocking pool. That is also roughly 47 verifications per second per core, which bounds how fast
//! PIN floods can burn CPU before issue 7's per-source limits step in.

use std::cell::RefCell;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use rand::RngExt;

use crate::store::ConferenceId;

/// Shortest PIN a tenant may choose.
pub const MIN_LEN: u8 = 4;
/// Longest PIN a tenant may choose.
pub const MAX_LEN: u8 = 12;
/// How a PIN is shown everywhere except the one response that creates it: fixed width, so
/// not even its length shows.
pub const MASK: &str = "*****";

/// argon2id memory cost in KiB: 19 MiB, the first of OWASP's equivalent argon2id settings
/// (Password Storage Cheat Sheet: m=19456 KiB, t=2, p=1); argon2 0.6's default too.
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;
/// argon2id passes over memory (OWASP, with the memory cost above).
pub const ARGON2_T_COST: u32 = 2;
/// argon2id lanes: one, so a verification occupies one blocking thread.
pub const ARGON2_P_COST: u32 = 1;
/// Hash output, bytes.
pub const ARGON2_OUTPUT_LEN: usize = 32;

/// Generated peppers and pepper files: 32 random bytes (256 bits).
pub const PEPPER_LEN: usize = 32;
/// A configured pepper shorter than this is refused: it would be guessable.
pub const MIN_PEPPER_LEN: usize = 16;

/// A PIN in clear. It exists only while a PIN is being created, delivered or checked; its
/// `Debug` and `Display` never show the digits, so it cannot leak into logs by accident.
///
/// The digits come out only through [`Pin::expose`]; a test (`expose_is_called_only_where_
/// allowed`) lists the files allowed to call it, so a new call site is a reviewed decision.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl Pin {
    /// Wraps digits the caller keyed in or a generator produced.
    pub fn new(digits: impl Into<String>) -> Pin {
        Pin(digits.into())
    }

    /// The digits, for hashing or for the one place that shows them (creation, email).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(*****)")
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// What went wrong generating or hashing a PIN.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("PIN length must be between {MIN_LEN} and {MAX_LEN} digits, got {0}")]
    Length(u8),
    /// argon2 refused its inputs (cannot happen with our fixed parameters and a pepper that
    /// passed [`Pepper::from_bytes`]; kept so it is an error, not a panic).
    #[error("hashing the PIN failed: {0}")]
    Hash(String),
    #[error("no acceptable PIN found after {0} draws")]
    NoStrongPin(u32),
}

/// Why a PIN is too easy to guess; [`generate`] never returns one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weakness {
    /// Four or more of the same digit in a row (`0000`, `47777`), which covers "all one digit".
    RepeatedDigit,
    /// Four or more digits counting up by one (`1234`, `90123`; no wrap from 9 to 0).
    AscendingRun,
    /// Four or more digits counting down by one (`9876`, `43210`).
    DescendingRun,
    /// Four or more consecutive digits of the PIN appear in the user's conference ID.
    InConferenceId,
    /// The same digits as the PIN it replaces.
    SameAsPrevious,
}

/// Checks that `len` is a PIN length a tenant may use (4–12).
pub fn check_length(len: u8) -> Result<(), PinError> {
    if (MIN_LEN..=MAX_LEN).contains(&len) {
        Ok(())
    } else {
        Err(PinError::Length(len))
    }
}

/// Draws a new PIN of `len` digits from the thread CSPRNG, rejecting weak ones (see
/// [`Weakness`]) and, when `previous` (the PHC hash it replaces) is given, a repeat of it.
///
/// `rand::rng()` is rand 0.10's `ThreadRng`: ChaCha12 seeded from the operating system
/// (getrandom) and reseeded from it every 64 KiB of output (rand 0.10.4
/// `src/rngs/thread.rs`), and it implements `CryptoRng`. Digits are drawn with
/// `random_range(0..10)`, which rejects out-of-range samples, so every digit is uniform.
pub fn generate(
    len: u8,
    conference: &ConferenceId,
    previous: Option<&str>,
    pepper: &Pepper,
) -> Result<Pin, PinError> {
    let mut rng = rand::rng();
    generate_with(len, conference, previous, pepper, || {
        char::from(b'0' + rng.random_range(0..10u8))
    })
}

/// [`generate`] with the digit source passed in, so tests can script the draws.
fn generate_with(
    len: u8,
    conference: &ConferenceId,
    previous: Option<&str>,
    pepper: &Pepper,
    mut digit: impl FnMut() -> char,
) -> Result<Pin, PinError> {
    check_length(len)?;
    // With 4 digits about 30 of 10 000 draws are weak, so 1000 draws never run out in practice.
    const MAX_DRAWS: u32 = 1000;
    for _ in 0..MAX_DRAWS {
        let digits: String = (0..len).map(|_| digit()).collect();
        if weakness(&digits, conference).is_some() {
            continue;
        }
        let pin = Pin(digits);
        if previous.is_some_and(|phc| verify(&pin, phc, pepper)) {
            continue;
        }
        return Ok(pin);
    }
    Err(PinError::NoStrongPin(MAX_DRAWS))
}

/// The first pattern that makes `digits` easy to guess, if any (the previous-PIN check needs
/// the hash and is done by [`generate`]).
pub fn weakness(digits: &str, conference: &ConferenceId) -> Option<Weakness> {
    const RUN: usize = 4;
    let d = digits.as_bytes();
    if d.windows(RUN).any(|w| w.iter().all(|&b| b == w[0])) {
        return Some(Weakness::RepeatedDigit);
    }
    if d.windows(RUN)
        .any(|w| w.windows(2).all(|p| p[1] == p[0] + 1))
    {
        return Some(Weakness::AscendingRun);
    }
    if d.windows(RUN)
        .any(|w| w.windows(2).all(|p| p[0] == p[1] + 1))
    {
        return Some(Weakness::DescendingRun);
    }
    let id = conference.as_str().as_bytes();
    if d.windows(RUN)
        .any(|w| id.windows(RUN).any(|part| part == w))
    {
        return Some(Weakness::InConferenceId);
    }
    None
}

/// Hashes `pin` with argon2id (the parameters above), a fresh 16-byte salt from the
/// operating system's CSPRNG, and the pepper as argon2's secret. Returns the PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH`); the pepper is not in it.
pub fn hash(pin: &Pin, pepper: &Pepper) -> Result<String, PinError> {
    hash_bytes(pin.expose().as_bytes(), pepper)
}

/// Whether `pin` is the PIN hashed into `phc` under `pepper`. Any malformed or non-argon2id
/// hash is simply "no".
///
/// The hash is recomputed with the stored salt and parameters (what argon2's
/// `verify_password` does, but into this thread's reused working memory) and compared in
/// constant time ([`secrets_equal`]). The time taken is dominated by argon2 itself, which
/// does not depend on the PIN.
pub fn verify(pin: &Pin, phc: &str, pepper: &Pepper) -> bool {
    verify_bytes(pin.expose().as_bytes(), phc, pepper)
}

fn argon2(pepper: &Pepper) -> Result<Argon2<'_>, PinError> {
    let params = Params::new(
        ARGON2_M_COST_KIB,
        ARGON2_T_COST,
        ARGON2_P_COST,
        Some(ARGON2_OUTPUT_LEN),
    )
    .map_err(|e| PinError::Hash(e.to_string()))?;
    Argon2::new_with_secret(&pepper.0, Algorithm::Argon2id, Version::V0x13, params)
        .map_err(|e| PinError::Hash(e.to_string()))
}

fn hash_bytes(secret: &[u8], pepper: &Pepper) -> Result<String, PinError> {
    let hash = argon2(pepper)?
        .hash_password(secret)
        .map_err(|e| PinError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

fn verify_bytes(secret: &[u8], phc: &str, pepper: &Pepper) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    // The stored hash's own m/t/p are used, so PINs hashed under older parameters verify.
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let blocks = params.block_count();
    let Ok(argon2) = Argon2::new_with_secret(&pepper.0, Algorithm::Argon2id, version, params)
    else {
        return false;
    };
    let mut computed = [0u8; 64];
    let Some(computed) = computed.get_mut(..expected.len()) else {
        return false;
    };
    let hashed = with_working_memory(blocks, |memory| {
        argon2.hash_password_into_with_memory(secret, salt, computed, memory)
    });
    hashed.is_ok() && secrets_equal(computed, expected.as_bytes())
}

thread_local! {
    /// argon2's working memory (19 MiB at our parameters), kept for the thread's life and
    /// reused by every verification on it. Allocating it per check cost thousands of page
    /// faults each time, and glibc kept the freed 19 MiB in the thread's malloc arena anyway
    /// (its mmap threshold rises to the size of the first freed block), one per thread that
    /// ever checked a PIN. Verifications run on the few [`crate::pin_checks`] threads, so
    /// this is a fixed cost.
    static WORKING_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's argon2 working memory, sized to `blocks` (reallocated only
/// when a hash with other parameters comes along).
fn with_working_memory<R>(blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
    WORKING_MEMORY.with_borrow_mut(|memory| {
        if memory.len() != blocks {
            *memory = Vec::new();
            *memory = vec![Block::new(); blocks];
        }
        f(memory)
    })
}

/// The server pepper: the argon2 secret every PIN hash is keyed with. It lives outside the
/// store (config, environment or `<data_dir>/pepper`) so a copy of the store alone cannot be
/// searched offline. `Debug` redacts it; it has no `Display`.
#[derive(Clone)]
pub struct Pepper(Vec<u8>);

/// Where [`Pepper::load`] found the pepper (for one log line at start; never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepperSource {
    Configured,
    Environment,
    File { path: PathBuf, created: bool },
}

/// Why no pepper could be had.
#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    #[error(
        "the PIN pepper must be at least {MIN_PEPPER_LEN} bytes (got {0}); use a long random string"
    )]
    TooShort(usize),
    #[error("pepper file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "pepper file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
}

impl Pepper {
    /// Environment variable holding the pepper.
    pub const ENV: &'static str = "PINBRIDGE_PIN_PEPPER";
    /// File name of the generated pepper inside the data directory.
    pub const FILE_NAME: &'static str = "pepper";

    /// A pepper from secret bytes (at least [`MIN_PEPPER_LEN`]).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Pepper, PepperError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_PEPPER_LEN {
            return Err(PepperError::TooShort(bytes.len()));
        }
        Ok(Pepper(bytes))
    }

    /// The pepper, from the first of: `configured` (the server's config value), the
    /// environment variable [`Pepper::ENV`], or `<data_dir>/pepper`, which is generated (32
    /// random bytes, mode 0600) when missing.
    pub fn load(
        configured: Option<&str>,
        data_dir: &Path,
    ) -> Result<(Pepper, PepperSource), PepperError> {
        let env = std::env::var(Self::ENV).ok().filter(|v| !v.is_empty());
        Self::resolve(configured, env.as_deref(), data_dir)
    }

    /// [`Pepper::load`] with the environment value passed in (tests do not touch the real
    /// environment).
    pub fn resolve(
        configured: Option<&str>,
        env: Option<&str>,
        data_dir: &Path,
    ) -> Result<(Pepper, PepperSource), PepperError> {
        if let Some(value) = configured {
            return Ok((Pepper::from_bytes(value)?, PepperSource::Configured));
        }
        if let Some(value) = env {
            return Ok((Pepper::from_bytes(value)?, PepperSource::Environment));
        }
        let path = data_dir.join(Self::FILE_NAME);
        let io_err = |source| PepperError::Io {
            path: path.clone(),
            source,
        };
        match fs::File::open(&path) {
            Ok(file) => Ok((
                Self::read_file(&path, file)?,
                PepperSource::File {
                    path,
                    created: false,
                },
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir).map_err(io_err)?;
                let pepper = Self::create_file(&path).map_err(io_err)?;
                Ok((
                    pepper,
                    PepperSource::File {
                        path,
                        created: true,
                    },
                ))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    fn read_file(path: &Path, mut file: fs::File) -> Result<Pepper, PepperError> {
        let io_err = |source| PepperError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = file.metadata().map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(PepperError::Permissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let mut bytes = Vec::with_capacity(PEPPER_LEN);
        file.read_to_end(&mut bytes).map_err(io_err)?;
        Pepper::from_bytes(bytes)
    }

    /// Writes 32 random bytes to a private temporary file, fsyncs it, and links it into place
    /// only if no pepper exists yet, so two processes starting at once agree on one pepper and
    /// no reader ever sees a partial file.
    fn create_file(path: &Path) -> io::Result<Pepper> {
        let mut bytes = vec![0u8; PEPPER_LEN];
        rand::rng().fill(&mut bytes[..]);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let linked = file
            .write_all(&bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    fs::File::open(dir)?.sync_all()?;
                }
                Ok(Pepper(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let file = fs::File::open(path)?;
                Self::read_file(path, file).map_err(io::Error::other)
            }
            Err(e) => Err(e),
        }
    }

    /// A PHC string that proves knowledge of this pepper without revealing it: argon2id of a
    /// fixed label keyed with the pepper. The store keeps one so that a process started with
    /// a different pepper (whose PINs would silently never verify) is refused instead.
    ///
    /// What it gives an attacker holding the store: nothing against a generated 32-byte
    /// pepper; against a weak configured one, a search at argon2id speed without also
    /// guessing a PIN (which is why configured peppers must be at least 16 bytes).
    pub fn fingerprint(&self) -> Result<String, PinError> {
        hash_bytes(Self::FINGERPRINT_LABEL, self)
    }

    /// Whether `fingerprint` (from [`Pepper::fingerprint`]) was made with this pepper.
    pub fn matches_fingerprint(&self, fingerprint: &str) -> bool {
        verify_bytes(Self::FINGERPRINT_LABEL, fingerprint, self)
    }

    /// Whether `other` is the same secret (compared without an early exit).
    pub fn same_as(&self, other: &Pepper) -> bool {
        secrets_equal(&self.0, &other.0)
    }

    const FINGERPRINT_LABEL: &'static [u8] = b"pinbridge pepper fingerprint v1";
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

/// 256 bits from the CSPRNG as 64 hex digits: the one way pinbridge makes a bearer secret
/// (admin token, sign-in links, sessions, CSRF tokens).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes[..]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two secrets are equal, compared in time that depends only on their lengths
/// (`subtle`).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn pepper(b: u8) -> Pepper {
        Pepper::from_bytes(vec![b; PEPPER_LEN]).unwrap()
    }

    fn conf(s: &str) -> ConferenceId {
        ConferenceId::parse(s).unwrap()
    }

    #[test]
    fn pins_never_print_their_digits() {
        let p = Pin::new("48213");
        assert_eq!(format!("{p:?} {p}"), "Pin(*****) *****");
        assert_eq!(p.expose(), "48213");
    }

    #[test]
    fn pepper_debug_redacts() {
        let p = Pepper::from_bytes("a very secret pepper value").unwrap();
        let shown = format!("{p:?}");
        assert_eq!(shown, "Pepper(<redacted>)");
        assert!(!shown.contains("secret"));
    }

    #[test]
    fn lengths_outside_4_to_12_are_refused_naming_the_range() {
        for len in [0, 3, 13, 255] {
            let err = check_length(len).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("PIN length must be between 4 and 12 digits, got {len}")
            );
            assert!(generate(len, &conf("1234567"), None, &pepper(1)).is_err());
        }
        for len in 4..=12 {
            check_length(len).unwrap();
        }
    }

    #[test]
    fn weak_patterns_are_recognised() {
        let c = conf("5550193");
        assert_eq!(weakness("0000", &c), Some(Weakness::RepeatedDigit));
        assert_eq!(weakness("99999", &c), Some(Weakness::RepeatedDigit));
        assert_eq!(weakness("47777", &c), Some(Weakness::RepeatedDigit));
        assert_eq!(weakness("1234", &c), Some(Weakness::AscendingRun));
        assert_eq!(weakness("81234", &c), Some(Weakness::AscendingRun));
        assert_eq!(weakness("0123", &c), Some(Weakness::AscendingRun));
        assert_eq!(weakness("9876", &c), Some(Weakness::DescendingRun));
        assert_eq!(weakness("843210", &c), Some(Weakness::DescendingRun));
        assert_eq!(weakness("5550193", &c), Some(Weakness::InConferenceId));
        assert_eq!(weakness("80193", &c), Some(Weakness::InConferenceId));
        assert_eq!(weakness("55501", &c), Some(Weakness::InConferenceId));
        // Three in a row, wrap-around and a 3-digit part of the ID are allowed.
        assert_eq!(weakness("12358", &c), None);
        assert_eq!(weakness("89012", &c), None);
        assert_eq!(weakness("11121", &c), None);
        assert_eq!(weakness("01948", &c), None);
    }

    #[test]
    fn generated_pins_are_never_weak_and_have_the_asked_length() {
        let p = pepper(1);
        let c = conf("1234567");
        for len in MIN_LEN..=MAX_LEN {
            for _ in 0..3000 {
                let pin = generate(len, &c, None, &p).unwrap();
                assert_eq!(pin.len(), usize::from(len));
                assert!(pin.expose().bytes().all(|b| b.is_ascii_digit()));
                assert_eq!(weakness(pin.expose(), &c), None, "{len} digits");
            }
        }
    }

    #[test]
    fn generated_pins_use_every_digit_evenly() {
        let p = pepper(1);
        let c = conf("1234567");
        let mut counts = [0u32; 10];
        for _ in 0..4000 {
            for b in generate(5, &c, None, &p).unwrap().expose().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        // 20 000 digits: 2000 expected each; the weak-pattern filter skews this by well under 5%.
        for (digit, n) in counts.iter().enumerate() {
            assert!((1800..=2200).contains(n), "digit {digit}: {n}");
        }
    }

    #[test]
    fn a_new_pin_never_repeats_the_previous_one() {
        let p = pepper(1);
        let c = conf("1234567");
        let previous = hash(&Pin::new("5821"), &p).unwrap();
        // The draws are scripted: first the previous PIN, then a weak one, then a fresh one.
        let mut draws = "5821".chars().chain("7777".chars()).chain("5830".chars());
        let pin = generate_with(4, &c, Some(&previous), &p, || draws.next().unwrap()).unwrap();
        assert_eq!(pin.expose(), "5830");
        // Without a previous hash the same first draw is accepted.
        let mut draws = "5821".chars();
        let pin = generate_with(4, &c, None, &p, || draws.next().unwrap()).unwrap();
        assert_eq!(pin.expose(), "5821");
    }

    #[test]
    fn generation_gives_up_rather_than_loop_forever() {
        let p = pepper(1);
        let err = generate_with(4, &conf("1234567"), None, &p, || '0').unwrap_err();
        assert!(matches!(err, PinError::NoStrongPin(1000)));
    }

    #[test]
    fn hash_verifies_only_the_right_pin_and_pepper() {
        let p = pepper(1);
        let pin = Pin::new("48213");
        let phc = hash(&pin, &p).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains("48213"));
        assert!(verify(&pin, &phc, &p));
        assert!(!verify(&Pin::new("48214"), &phc, &p));
        assert!(!verify(&Pin::new(""), &phc, &p));
        assert!(!verify(&pin, &phc, &pepper(2)));
        assert!(!verify(&pin, "not a hash", &p));
        // Salted: the same PIN hashes differently each time, and both verify.
        let again = hash(&pin, &p).unwrap();
        assert_ne!(phc, again);
        assert!(verify(&pin, &again, &p));
    }

    #[test]
    fn other_argon2_variants_are_not_accepted() {
        let p = pepper(1);
        let phc = hash(&Pin::new("48213"), &p)
            .unwrap()
            .replace("$argon2id$", "$argon2i$");
        assert!(!verify(&Pin::new("48213"), &phc, &p));
    }

    #[test]
    fn fingerprint_tells_peppers_apart() {
        let f = pepper(1).fingerprint().unwrap();
        assert!(pepper(1).matches_fingerprint(&f));
        assert!(!pepper(2).matches_fingerprint(&f));
    }

    #[test]
    fn configured_pepper_wins_then_environment_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let long = "0123456789abcdef-configured";
        let (_, src) =
            Pepper::resolve(Some(long), Some("environment-pepper-xyz"), dir.path()).unwrap();
        assert_eq!(src, PepperSource::Configured);
        let (_, src) = Pepper::resolve(None, Some("environment-pepper-xyz"), dir.path()).unwrap();
        assert_eq!(src, PepperSource::Environment);
        assert!(!dir.path().join("pepper").exists());
        assert!(matches!(
            Pepper::resolve(Some("short"), None, dir.path()),
            Err(PepperError::TooShort(5))
        ));
    }

    #[test]
    fn pepper_file_is_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (first, src) = Pepper::resolve(None, None, &data).unwrap();
        let path = data.join("pepper");
        assert_eq!(
            src,
            PepperSource::File {
                path: path.clone(),
                created: true
            }
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), PEPPER_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let (second, src) = Pepper::resolve(None, None, &data).unwrap();
        assert_eq!(
            src,
            PepperSource::File {
                path,
                created: false
            }
        );
        assert_eq!(first.0, second.0);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&data).unwrap().count(), 1);
    }

    #[test]
    fn pepper_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pepper");
        fs::write(&path, [7u8; PEPPER_LEN]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Pepper::resolve(None, None, dir.path()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    /// Every file allowed to take a PIN's digits out of its wrapper (outside its unit tests).
    /// The digits must reach argon2 (here) and the one face that shows a new PIN (the
    /// `users add` command), the admin API's one response with a new PIN, the self-service
    /// page's one view of it, and the email that delivers it (issue 5). Anything else (an audit entry, a log line) has no business
    /// with them.
    #[test]
    fn expose_is_called_only_where_allowed() {
        const ALLOWED: &[&str] = &[
            "src/pin.rs",
            "src/main.rs",
            "src/admin/api.rs",
            "src/admin/emails.rs",
            "src/admin/web.rs",
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut stack = vec![root.join("src")];
        let mut offenders = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if path.extension().is_none_or(|e| e != "rs") || ALLOWED.contains(&rel.as_str()) {
                    continue;
                }
                // Unit tests (the `#[cfg(test)]` module at the bottom) may look at digits.
                let source = fs::read_to_string(&path).unwrap();
                let code = source.split("\n#[cfg(test)]\nmod tests").next().unwrap();
                if code.contains(".expose()") {
                    offenders.push(rel);
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "Pin::expose() called in {offenders:?}"
        );
    }

    /// Release-build timing of one verification, for the figures in the docs:
    /// `cargo test --release --lib pin::tests::verify_time -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn verify_time() {
        let p = pepper(1);
        let pin = Pin::new("48213");
        let phc = hash(&pin, &p).unwrap();
        let n = 20;
        let start = Instant::now();
        for _ in 0..n {
            assert!(verify(&pin, &phc, &p));
        }
        println!("argon2id verify: {:?} each", start.elapsed() / n);
    }
}
