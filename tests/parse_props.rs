//! Issue 7, "robust parsing is proven": proptests that take *valid* inputs — our INVITE, BYE,
//! OPTIONS… texts, every RFC 4475/5118 torture message, SDP offers, RTP and RFC 4733 packets,
//! SIP INFO bodies — apply flips, inserts, deletes, duplicated and swapped lines, deep
//! folding and truncation, and check the outcome with the oracles in `pinbridge::fuzz`:
//! a request that parses gets a 1xx–6xx response that our own parser reads back (none for
//! ACK), an unparseable but addressable request gets exactly the parser's status, anything
//! else is dropped and counted; SDP, RTP, RFC 4733 and INFO outcomes are in range. The
//! random-bytes proptests beside each parser stay where they are; these start from valid
//! input so they reach the deep paths. Proptest shrinks a failure to the fewest edits.

mod common;

use proptest::prelude::*;

use common::torture;
use pinbridge::fuzz::{self, Mutation, TOKENS, Target};

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 0usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Token { at, token }),
        (0usize..64, prop_oneof![0usize..3, 100usize..200])
            .prop_map(|(line, times)| Mutation::DuplicateLine { line, times }),
        (0usize..64, 0usize..64).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (0usize..64, prop_oneof![0usize..4, 1000usize..2000])
            .prop_map(|(line, times)| Mutation::Fold { line, times }),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..6)
}

fn check(
    target: Target,
    seeds: &[Vec<u8>],
    pick: usize,
    edits: &[Mutation],
) -> Result<(), TestCaseError> {
    let input = fuzz::mutate(&seeds[pick % seeds.len()], edits);
    target.check(&input).map_err(|why| {
        TestCaseError::fail(format!(
            "{why}\ninput: {:?}",
            String::from_utf8_lossy(&input[..input.len().min(800)])
        ))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_requests_are_answered_or_counted(pick in any::<usize>(), edits in mutations()) {
        check(Target::Sip, &Target::Sip.seeds(), pick, &edits)?;
    }

    #[test]
    fn mutated_torture_messages_are_answered_or_counted(pick in any::<usize>(), edits in mutations()) {
        let seeds: Vec<Vec<u8>> = torture::manifest_files().iter().map(|f| torture::load(f)).collect();
        prop_assert!(seeds.len() > 50, "the corpus has {} messages", seeds.len());
        check(Target::Sip, &seeds, pick, &edits)?;
    }

    #[test]
    fn mutated_in_dialog_requests_are_answered(pick in any::<usize>(), edits in mutations()) {
        check(Target::Dialog, &Target::Dialog.seeds(), pick, &edits)?;
    }

    #[test]
    fn mutated_sdp_offers_are_answered_or_refused_with_400_or_488(pick in any::<usize>(), edits in mutations()) {
        check(Target::Sdp, &Target::Sdp.seeds(), pick, &edits)?;
    }

    #[test]
    fn mutated_rtp_packets_parse_inside_their_bounds(pick in any::<usize>(), edits in mutations()) {
        check(Target::Rtp, &Target::Rtp.seeds(), pick, &edits)?;
    }

    #[test]
    fn mutated_telephone_events_parse_or_name_the_error(pick in any::<usize>(), edits in mutations()) {
        check(Target::Rfc4733, &Target::Rfc4733.seeds(), pick, &edits)?;
    }

    #[test]
    fn mutated_info_bodies_give_a_key_or_200_400_415(pick in any::<usize>(), edits in mutations()) {
        check(Target::Info, &Target::Info.seeds(), pick, &edits)?;
    }
}

/// The stable-toolchain fuzz harness, a short bounded run of every target (the README says
/// how to run millions): messages tried and crashes are printed; crashes and oracle failures
/// must be 0.
#[test]
fn short_fuzz_run_of_every_target_finds_nothing() {
    let corpus = fuzz::corpus_seeds(&torture::torture_dir());
    assert!(
        corpus.len() > 50,
        "torture corpus: {} messages",
        corpus.len()
    );
    let mut bad = Vec::new();
    for target in Target::ALL {
        let extra: &[Vec<u8>] = if target == Target::Sip { &corpus } else { &[] };
        let count = match target {
            Target::Sip | Target::Dialog => 3_000,
            _ => 10_000,
        };
        let report = fuzz::run(target, extra, 0x7e57, count);
        println!("{report}");
        assert_eq!(report.tried, count);
        if report.crashes > 0 || report.failures > 0 {
            bad.push(report.to_string());
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
