//! Which number of a pool an attempt shows.
//!
//! [`preference`] orders the pool's active (not paused) numbers for one callee: by locality
//! first (the callee's area code, then their region, then their country, then any), then by
//! a rendezvous hash of the callee and the number. Rendezvous hashing ("highest random
//! weight") keeps each callee's number when other numbers are added, paused or removed, and
//! does not depend on the order the pool lists its numbers. With `consistent` the hash key is
//! the callee's number alone, so the same callee sees the same number on every attempt;
//! otherwise the attempt's id joins the key and a callee's attempts spread over the equally
//! local numbers. [`choose`] walks the order and takes the first number whose caps permit one
//! more attempt.

use chrono::{DateTime, Utc};

use super::{CallerIdPool, Locality};
use crate::phone::PhoneNumber;

/// The numbers an attempt to `callee` may show, best first; paused numbers are left out.
/// `attempt` (the attempt's id) spreads attempts unless the pool is `consistent`.
pub fn preference<'a>(
    pool: &'a CallerIdPool,
    callee: &PhoneNumber,
    attempt: &str,
) -> Vec<&'a PhoneNumber> {
    let here = Locality::of(callee);
    let key = if pool.consistent {
        callee.digits().to_owned()
    } else {
        format!("{}/{attempt}", callee.digits())
    };
    let mut ranked: Vec<(u8, u64, &PhoneNumber)> = pool
        .numbers()
        .iter()
        .filter(|n| !n.paused)
        .map(|n| {
            let tier = if pool.local_presence {
                tier(&here, &n.locality)
            } else {
                0
            };
            (tier, weight(&key, n.number.digits()), &n.number)
        })
        .collect();
    // Highest weight first; the number itself breaks a (vanishingly rare) tie, so the order
    // never depends on the pool's listing.
    ranked.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
    ranked.into_iter().map(|(_, _, n)| n).collect()
}

/// How local a pool number is to a callee: 0 same area code, 1 same region, 2 same country
/// code, 3 elsewhere.
pub fn tier(callee: &Locality, number: &Locality) -> u8 {
    let same_country = callee.country_code.is_some() && callee.country_code == number.country_code;
    if same_country && callee.area.is_some() && callee.area == number.area {
        0
    } else if callee.region.is_some() && callee.region == number.region {
        1
    } else if same_country {
        2
    } else {
        3
    }
}

/// A stable 64-bit weight of `(key, number)`: FNV-1a, then the splitmix64 finaliser so that
/// close inputs get unrelated weights. Written out rather than `std`'s hasher, whose output
/// may change between Rust releases: replicas of different builds must agree.
pub fn weight(key: &str, number: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0xff]).chain(number.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What the walk over the preference order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Show this number (one attempt was counted on it).
    Use(PhoneNumber),
    /// Every active number is capped; the first frees at this instant.
    Wait(DateTime<Utc>),
    /// No number is active (all paused).
    NoneActive,
}

/// Walks `order` (from [`preference`]) and returns the first number `take` counts an attempt
/// on. `take` counts one attempt on a number when its caps permit (answering `None`), or
/// answers when the number is free again; the dialer's `take` is a compare-and-set on the
/// number's shared record.
pub async fn choose<'a, E, F, Fut>(order: &[&'a PhoneNumber], mut take: F) -> Result<Choice, E>
where
    // A plain closure returning a future rather than an async closure: the latter's
    // higher-ranked borrow makes the dialer's call task not `Send`.
    F: FnMut(&'a PhoneNumber) -> Fut,
    Fut: std::future::Future<Output = Result<Option<DateTime<Utc>>, E>>,
{
    let mut earliest: Option<DateTime<Utc>> = None;
    for number in order {
        match take(number).await? {
            None => return Ok(Choice::Use((*number).clone())),
            Some(at) => earliest = Some(earliest.map_or(at, |e| e.min(at))),
        }
    }
    Ok(earliest.map_or(Choice::NoneActive, Choice::Wait))
}

#[cfg(test)]
mod tests;
