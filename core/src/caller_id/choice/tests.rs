use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

use super::*;
use crate::{
    caller_id::{NumberSpec, PoolSpec},
    phone::PhoneRule,
};

/// Area codes with a region each: three in the US, one in Canada; and two UK numbers.
const AREAS: [&str; 4] = ["212", "415", "303", "416"];

fn random_number(rng: &mut StdRng) -> String {
    if rng.random_bool(0.15) {
        format!("+44207946{:04}", rng.random_range(0..1000))
    } else {
        let area = AREAS[rng.random_range(0..AREAS.len())];
        format!(
            "+1{area}{}{:04}",
            rng.random_range(720..740),
            rng.random_range(0..10_000)
        )
    }
}

fn random_pool(rng: &mut StdRng) -> CallerIdPool {
    let mut seen = BTreeSet::new();
    let mut numbers = Vec::new();
    for _ in 0..rng.random_range(1..12) {
        let number = random_number(rng);
        if seen.insert(number.clone()) {
            numbers.push(NumberSpec::Full {
                number,
                paused: rng.random_bool(0.2),
            });
        }
    }
    CallerIdPool::parse(
        PoolSpec {
            numbers,
            local_presence: rng.random_bool(0.8),
            consistent: rng.random_bool(0.5),
            max_attempts_per_hour: None,
            max_attempts_per_day: None,
        },
        PhoneRule::Strict,
    )
    .expect("generated numbers are valid")
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

/// Generated pools and callees: the order holds exactly the active numbers, the most local
/// first, does not depend on how the pool lists them, and under `consistent` does not depend
/// on the attempt either, nor on pausing another number.
#[test]
fn the_order_is_local_first_stable_and_leaves_out_paused_numbers() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..2_000 {
        let mut pool = random_pool(&mut rng);
        let callee: PhoneNumber = random_number(&mut rng).parse().expect("callee");
        let here = Locality::of(&callee);
        let order = preference(&pool, &callee, "c/1");
        let active: BTreeSet<&PhoneNumber> = pool
            .numbers()
            .iter()
            .filter(|n| !n.paused)
            .map(|n| &n.number)
            .collect();
        assert_eq!(
            order.iter().copied().collect::<BTreeSet<_>>(),
            active,
            "seed {seed}"
        );
        assert_eq!(order.len(), active.len(), "seed {seed}: no repeats");
        if pool.local_presence {
            let tiers: Vec<u8> = order
                .iter()
                .map(|n| tier(&here, &Locality::of(n)))
                .collect();
            assert!(
                tiers.windows(2).all(|w| w[0] <= w[1]),
                "seed {seed}: a less local number came first: {tiers:?}"
            );
        }
        // The pool's listing order does not matter.
        let mut shuffled = PoolSpec::from(pool.clone());
        shuffled.numbers.shuffle(&mut rng);
        let shuffled = CallerIdPool::parse(shuffled, PhoneRule::Strict).expect("same pool");
        assert_eq!(preference(&shuffled, &callee, "c/1"), order, "seed {seed}");
        if pool.consistent {
            assert_eq!(
                preference(&pool, &callee, "c/2"),
                order,
                "seed {seed}: a consistent pool's order ignores the attempt"
            );
            // Pausing a number the callee does not see keeps their number.
            if let [first, .., other] = order.as_slice() {
                let (first, other) = ((*first).clone(), (*other).clone());
                pool.set_paused(&other, true);
                assert_eq!(
                    preference(&pool, &callee, "c/3").first(),
                    Some(&&first),
                    "seed {seed}"
                );
            }
        }
    }
}

/// Generated caps: the walk takes the first number of the order that is not capped, waits
/// for the earliest capped one when all are, and finds nothing only in an all-paused pool.
#[test]
fn the_walk_skips_capped_numbers_and_waits_for_the_first_to_free() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    for _ in 0..2_000 {
        let pool = random_pool(&mut rng);
        let callee: PhoneNumber = random_number(&mut rng).parse().expect("callee");
        let order = preference(&pool, &callee, "c/1");
        let mut capped: BTreeMap<&PhoneNumber, DateTime<Utc>> = BTreeMap::new();
        for n in &order {
            if rng.random_bool(0.5) {
                capped.insert(
                    n,
                    now + chrono::Duration::seconds(rng.random_range(1..7200)),
                );
            }
        }
        let mut asked = Vec::new();
        let choice = block_on(choose(&order, |n: &PhoneNumber| {
            asked.push(n.clone());
            std::future::ready(Ok::<_, std::convert::Infallible>(capped.get(n).copied()))
        }))
        .expect("infallible");
        match order.iter().find(|n| !capped.contains_key(*n)) {
            Some(free) => {
                assert_eq!(choice, Choice::Use((*free).clone()), "seed {seed}");
                assert_eq!(asked.last(), Some(*free), "seed {seed}: stops at it");
            }
            None if order.is_empty() => {
                assert_eq!(choice, Choice::NoneActive, "seed {seed}");
                assert!(pool.numbers().iter().all(|n| n.paused), "seed {seed}");
            }
            None => {
                let first = capped.values().min().copied().expect("some capped");
                assert_eq!(choice, Choice::Wait(first), "seed {seed}");
            }
        }
    }
}

/// Without `consistent`, a callee's attempts spread over the equally local numbers; with it,
/// every attempt shows the same one.
#[test]
fn attempts_spread_unless_the_pool_is_consistent() {
    let numbers = [
        "+12127360001",
        "+12127360002",
        "+12127360003",
        "+14157230001",
    ];
    let mut spec = PoolSpec {
        numbers: numbers
            .iter()
            .map(|n| NumberSpec::Plain((*n).into()))
            .collect(),
        local_presence: true,
        consistent: false,
        max_attempts_per_hour: None,
        max_attempts_per_day: None,
    };
    let callee: PhoneNumber = "+12127369999".parse().expect("callee");
    let pool = CallerIdPool::parse(spec.clone(), PhoneRule::Strict).expect("pool");
    let mut shown = BTreeMap::<String, u32>::new();
    for attempt in 0..3_000 {
        let first = preference(&pool, &callee, &format!("call/{attempt}"))[0].to_string();
        *shown.entry(first).or_default() += 1;
    }
    assert_eq!(shown.len(), 3, "only the three 212 numbers: {shown:?}");
    assert!(shown.values().all(|n| *n > 800), "even spread: {shown:?}");
    spec.consistent = true;
    let pool = CallerIdPool::parse(spec, PhoneRule::Strict).expect("pool");
    let first = preference(&pool, &callee, "call/0")[0].clone();
    assert!(first.as_str().starts_with("+1212"));
    for attempt in 1..100 {
        assert_eq!(
            preference(&pool, &callee, &format!("call/{attempt}"))[0],
            &first
        );
    }
}

#[test]
fn locality_tiers_by_area_code_region_and_country() {
    let at = |n: &str| Locality::of(&n.parse().expect("n"));
    let nyc = at("+12127360001");
    assert_eq!(tier(&nyc, &at("+12127369999")), 0, "same area code");
    assert_eq!(tier(&nyc, &at("+14157230001")), 1, "same region (US)");
    assert_eq!(tier(&nyc, &at("+14169790001")), 2, "same country code (CA)");
    assert_eq!(tier(&nyc, &at("+442079460001")), 3, "elsewhere");
    assert_eq!(
        tier(&at("+442079460001"), &at("+442079460002")),
        1,
        "outside the NANP, the region"
    );
}
