//! What an image is built from, as one hash, and whether an existing image can be reused.
//! Pure: the caller reads files and asks Docker; the decision is made here.

use sha2::{Digest, Sha256};

/// The hash of an image's inputs: each named part (a file's bytes, a pinned version, the
/// parent image's id) in order, each name and value length-prefixed so that moving bytes
/// from one part to the next changes the hash.
pub(crate) fn hash(parts: &[(&str, &[u8])]) -> String {
    let mut sha = Sha256::new();
    for (name, value) in parts {
        for field in [name.as_bytes(), value] {
            sha.update((field.len() as u64).to_le_bytes());
            sha.update(field);
        }
    }
    hex::encode(sha.finalize())
}

/// What to do about one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// An image with this tag exists and was built from the same inputs.
    Reuse,
    /// Missing, built from other inputs, or a rebuild was asked for.
    Build,
}

/// `existing` is the inputs label of the image now holding the tag, if any.
pub(crate) fn decide(wanted: &str, existing: Option<&str>, force: bool) -> Action {
    match existing {
        Some(label) if !force && label == wanted => Action::Reuse,
        _ => Action::Build,
    }
}

#[cfg(test)]
mod tests {
    use super::{Action, decide, hash};

    /// A small deterministic generator (splitmix64): the seed is printed, so a failure replays.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn any_change_to_any_part_changes_the_hash_and_equal_inputs_do_not() {
        let seed = 0x00c0_ffee_u64;
        eprintln!("seed {seed:#x}");
        let mut state = seed;
        for _ in 0..500 {
            let parts: Vec<(String, Vec<u8>)> = (0..1 + next(&mut state) % 4)
                .map(|i| {
                    let len = (next(&mut state) % 6) as usize;
                    let bytes = (0..len).map(|_| next(&mut state) as u8).collect();
                    (format!("p{i}"), bytes)
                })
                .collect();
            let view = |p: &[(String, Vec<u8>)]| -> String {
                let borrowed: Vec<(&str, &[u8])> =
                    p.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                hash(&borrowed)
            };
            let original = view(&parts);
            assert_eq!(original, view(&parts.clone()), "seed {seed:#x}");
            let mut changed = parts.clone();
            let which = (next(&mut state) as usize) % changed.len();
            match next(&mut state) % 3 {
                0 => changed[which].1.push(next(&mut state) as u8),
                1 => changed[which].0.push('x'),
                _ if !changed[which].1.is_empty() => changed[which].1[0] ^= 1,
                _ => changed[which].1.push(0),
            }
            assert_ne!(original, view(&changed), "seed {seed:#x}: {parts:?}");
        }
    }

    #[test]
    fn bytes_moved_between_parts_change_the_hash() {
        assert_ne!(
            hash(&[("a", b"xy"), ("b", b"z")]),
            hash(&[("a", b"x"), ("b", b"yz")])
        );
    }

    #[test]
    fn an_image_is_reused_only_when_its_label_matches_and_no_rebuild_is_asked() {
        assert_eq!(decide("h1", Some("h1"), false), Action::Reuse);
        assert_eq!(decide("h1", Some("h1"), true), Action::Build);
        assert_eq!(decide("h1", Some("h0"), false), Action::Build);
        assert_eq!(decide("h1", None, false), Action::Build);
    }
}
