//! The do-not-call lists in memory, kept current by a KV watch on the `dnc` bucket.
//!
//! Every accepted call must not be on the global list nor on its campaign's. Asking the bucket
//! costs two reads per number, a large share of nats-server's work per call and of a bulk
//! request's time, so, as [`crate::campaign_cache`] does for campaigns, a watch from the start
//! delivers every listing and then every change, and once it has caught up the cache answers
//! without a round trip. Until then, and whenever the watch failed (the cache is emptied and
//! the watch restarted), [`DncCache::lookup`] answers "don't know" and the caller reads the
//! bucket ([`ccm_core::dnc::listed`]): nothing listed is missed because the cache is cold, and
//! an empty cache never claims to be current.
//!
//! Consistency: this replica's own listings and removals are recorded as soon as their KV
//! write returns ([`DncCache::record`]), so the next call on this replica sees them. A change
//! made elsewhere (another replica, an operator writing the bucket) is seen within the watch's
//! latency, milliseconds; a call accepted in that window is still never dialled, because the
//! dialer reads the bucket again just before placing. That check is the authoritative one;
//! this one is the early refusal that answers the client.
//!
//! Ordering: an own write and the watch's delivery of it race (the watch may still be behind
//! and deliver an older state of the same number afterwards). Each own write is therefore
//! remembered with its bucket revision until the watch reaches it, and older watch entries for
//! that number are ignored meanwhile; an own write the watch already passed is not applied at
//! all, since the watch holds that state or a newer one.
//!
//! Memory: a number is kept as its digits packed into one `u64` ([`Digits`]), in one hash set
//! per list, so an entry costs 9 bytes of table (8 plus hashbrown's control byte) at a load
//! between 7/16 and 7/8. One million numbers on the global list take a table of 2^21 slots:
//! 18 MiB by the table's layout (`tests::a_million_numbers_fit_in_tens_of_mib`), and the
//! resident memory (VmRSS) of a test process grew by 18.2 MiB as it loaded them.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::kv;
use ccm_core::{CampaignId, PhoneNumber, dnc::DncList};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// The most digits [`Digits`] packs: E.164 numbers have at most 15, and 10^15 fits in 50 bits.
const MAX_DIGITS: usize = 15;

/// A phone number's digits packed into a `u64`: the value shifted left by 4, the digit count
/// in the low 4 bits, so numbers differing only by leading zeros stay distinct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digits(u64);

impl Digits {
    /// Packs 1 to 15 ASCII digits; anything else is not a number the cache can hold.
    pub fn parse(digits: &str) -> Option<Self> {
        if digits.is_empty() || digits.len() > MAX_DIGITS {
            return None;
        }
        let mut value = 0_u64;
        for byte in digits.bytes() {
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u64::from(byte - b'0');
        }
        // At most 15 digits: the value is below 2^50, so the shift cannot overflow.
        let len = u64::try_from(digits.len()).ok()?;
        Some(Self((value << 4) | len))
    }

    /// The digits of `phone`.
    pub fn of(phone: &PhoneNumber) -> Option<Self> {
        Self::parse(phone.digits())
    }
}

/// A key of the `dnc` bucket in compact form: the list (`None`: the global list) and the
/// number's digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DncKey {
    campaign: Option<CampaignId>,
    digits: Digits,
}

impl DncKey {
    /// The key of `phone` on `list`, when the number can be packed.
    pub fn new(list: DncList, phone: &PhoneNumber) -> Option<Self> {
        let campaign = match list {
            DncList::Global => None,
            DncList::Campaign(id) => Some(id),
        };
        Some(Self {
            campaign,
            digits: Digits::of(phone)?,
        })
    }

    /// Parses a bucket key, `global.<digits>` or `<campaign>.<digits>`, exactly as
    /// [`DncList::key`] writes it; any other key matches no look-up and is `None`.
    pub fn parse(key: &str) -> Option<Self> {
        let (list, digits) = key.split_once('.')?;
        let campaign = if list == "global" {
            None
        } else {
            let id: CampaignId = list.parse().ok()?;
            // `007` or ` 7` would parse, but no look-up ever asks for that key.
            if id.to_string() != list {
                return None;
            }
            Some(id)
        };
        Some(Self {
            campaign,
            digits: Digits::parse(digits)?,
        })
    }

    /// The list this key is on.
    pub fn list(&self) -> DncList {
        self.campaign.map_or(DncList::Global, DncList::Campaign)
    }
}

/// The cache; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DncCache {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The watch has delivered the whole bucket: the cache may answer.
    current: AtomicBool,
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Listed numbers, per list (`None`: the global list).
    lists: HashMap<Option<CampaignId>, HashSet<Digits>>,
    /// This replica's writes the watch has not delivered yet: key → the write's revision.
    own: HashMap<DncKey, u64>,
    /// The last revision the watch delivered.
    seen: u64,
}

impl State {
    fn set(&mut self, key: DncKey, listed: bool) {
        if listed {
            self.lists
                .entry(key.campaign)
                .or_default()
                .insert(key.digits);
        } else if let Some(list) = self.lists.get_mut(&key.campaign) {
            list.remove(&key.digits);
            if list.is_empty() {
                self.lists.remove(&key.campaign);
            }
        }
    }

    fn contains(&self, campaign: Option<CampaignId>, digits: Digits) -> bool {
        self.lists
            .get(&campaign)
            .is_some_and(|list| list.contains(&digits))
    }

    /// A change delivered by the watch, at `revision`.
    fn watched(&mut self, key: DncKey, listed: bool, revision: u64) {
        self.seen = self.seen.max(revision);
        if let Some(&own) = self.own.get(&key) {
            if revision < own {
                // Older than what this replica wrote since: the cache already holds newer.
                return;
            }
            self.own.remove(&key);
        }
        self.set(key, listed);
    }

    /// This replica's own write, at `revision`.
    fn recorded(&mut self, key: DncKey, listed: bool, revision: u64) {
        if revision <= self.seen {
            // The watch delivered this write already, and perhaps a newer one of the key.
            return;
        }
        self.set(key, listed);
        let own = self.own.entry(key).or_insert(revision);
        *own = (*own).max(revision);
    }
}

impl DncCache {
    /// The list that forbids calling `phone` in `campaign` (the global list first), or `None`
    /// when the cache cannot answer: not caught up with the bucket, or a number it cannot
    /// pack. The caller then reads the bucket.
    pub fn lookup(&self, campaign: CampaignId, phone: &PhoneNumber) -> Option<Option<DncList>> {
        if !self.is_current() {
            return None;
        }
        let digits = Digits::of(phone)?;
        let state = self.inner.state.read().unwrap_or_else(|e| e.into_inner());
        Some(if state.contains(None, digits) {
            Some(DncList::Global)
        } else if state.contains(Some(campaign), digits) {
            Some(DncList::Campaign(campaign))
        } else {
            None
        })
    }

    /// As [`Self::lookup`], reading `bucket` when the cache cannot answer.
    pub async fn listed(
        &self,
        bucket: &kv::Store,
        campaign: CampaignId,
        phone: &PhoneNumber,
    ) -> Result<Option<DncList>, kv::EntryError> {
        match self.lookup(campaign, phone) {
            Some(answer) => Ok(answer),
            None => ccm_core::dnc::listed(bucket, campaign, phone).await,
        }
    }

    /// Whether the cache has caught up with the bucket and answers look-ups.
    pub fn is_current(&self) -> bool {
        self.inner.current.load(Ordering::Acquire)
    }

    /// Records this replica's write of `phone` on `list` (`listed`: a put; otherwise a delete
    /// or purge) at bucket `revision`, so the next look-up here sees it.
    pub fn record(&self, list: DncList, phone: &PhoneNumber, listed: bool, revision: u64) {
        // A number that cannot be packed is never answered from the cache.
        let Some(key) = DncKey::new(list, phone) else {
            return;
        };
        self.inner
            .state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .recorded(key, listed, revision);
    }

    fn watched(&self, key: DncKey, listed: bool, revision: u64) {
        self.inner
            .state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .watched(key, listed, revision);
    }

    fn reset(&self) {
        self.inner.current.store(false, Ordering::Release);
        // A new state rather than `clear`, which would keep the tables' memory.
        *self.inner.state.write().unwrap_or_else(|e| e.into_inner()) = State::default();
    }

    /// Follows the bucket until `shutdown`; restarts the watch when it fails.
    pub async fn follow(self, bucket: kv::Store, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.watch_once(&bucket, &shutdown).await {
                tracing::warn!(error = %crate::error_chain(e.as_ref()), "do-not-call watch failed; reading the bucket until it is back");
            }
            self.reset();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn watch_once(
        &self,
        bucket: &kv::Store,
        shutdown: &CancellationToken,
    ) -> Result<(), async_nats::Error> {
        // Every message of the bucket's stream, in stream order: the bucket keeps one message
        // per key, so this is the same set as the last-per-key history, and the order is what
        // tells when the cache has caught up (below).
        let mut watch = bucket.watch_all_from_revision(1).await?;
        // The stream's state asked once the watch exists, so the watch delivers its last
        // message, or one that replaced it: the cache is current once it has applied that
        // revision. Asked of the server: `kv::Store::status` only returns the state cached
        // when the handle was opened, which is stale by the time a watch restarts (an empty
        // bucket then would make an empty cache current). Nothing to catch up with in an empty
        // bucket.
        let info = bucket.stream.get_info().await?;
        let caught_up_at = info.state.last_sequence;
        if info.state.messages == 0 {
            self.inner.current.store(true, Ordering::Release);
        }
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                entry = watch.next() => entry,
            };
            let Some(entry) = entry else {
                return Err("the watch ended".into());
            };
            let entry = entry?;
            match DncKey::parse(&entry.key) {
                Some(key) => {
                    self.watched(key, entry.operation == kv::Operation::Put, entry.revision)
                }
                None => {
                    tracing::warn!(key = %entry.key, "ignoring a do-not-call key that names no list and number")
                }
            }
            if entry.revision >= caught_up_at {
                self.inner.current.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ccm_core::PhoneRule;

    use super::*;

    fn phone(input: &str) -> PhoneNumber {
        PhoneNumber::parse(input, PhoneRule::Lenient).expect("phone")
    }

    fn campaign(id: u64) -> CampaignId {
        CampaignId::new(id).expect("id")
    }

    #[test]
    fn digits_keep_leading_zeros_and_refuse_what_is_not_a_number() {
        assert_eq!(Digits::parse("0123456"), Digits::parse("0123456"));
        assert_ne!(Digits::parse("00123456"), Digits::parse("0123456"));
        assert_ne!(Digits::parse("15550001234"), Digits::parse("15550001235"));
        assert!(Digits::parse("999999999999999").is_some(), "15 digits");
        for bad in [
            "",
            "1234567890123456",
            "1555000123x",
            "+15550001234",
            "1 555",
        ] {
            assert_eq!(Digits::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_parse_exactly_as_the_bucket_writes_them() {
        let number = phone("+1 555 000 1234");
        for list in [DncList::Global, DncList::Campaign(campaign(7))] {
            let key = DncKey::parse(&list.key(&number)).expect("key");
            assert_eq!(Some(key), DncKey::new(list, &number));
            assert_eq!(key.list(), list);
        }
        for bad in [
            "",
            "global",
            "global.",
            "global.abc",
            "0.15550001234",
            "007.15550001234",
            "campaign.15550001234",
            "7.1555000123412345",
            "7.15550001234.1",
        ] {
            assert_eq!(DncKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn answers_only_once_current_and_names_the_global_list_first() {
        let cache = DncCache::default();
        let (number, id) = (phone("+15550001234"), campaign(7));
        cache.record(DncList::Global, &number, true, 1);
        cache.record(DncList::Campaign(id), &number, true, 2);
        assert_eq!(cache.lookup(id, &number), None, "not caught up: don't know");
        cache.inner.current.store(true, Ordering::Release);
        assert_eq!(cache.lookup(id, &number), Some(Some(DncList::Global)));
        cache.record(DncList::Global, &number, false, 3);
        assert_eq!(cache.lookup(id, &number), Some(Some(DncList::Campaign(id))));
        assert_eq!(cache.lookup(campaign(8), &number), Some(None));
        cache.reset();
        assert_eq!(cache.lookup(id, &number), None, "reset: don't know");
    }

    #[test]
    fn own_writes_win_over_older_watch_entries_and_yield_to_newer_ones() {
        let cache = DncCache::default();
        cache.inner.current.store(true, Ordering::Release);
        let (number, id) = (phone("+15550001234"), campaign(7));
        let key = DncKey::new(DncList::Global, &number).expect("key");
        // Listed at 5, removed here at 9; the watch, behind, then delivers revision 5.
        cache.watched(key, true, 5);
        cache.record(DncList::Global, &number, false, 9);
        cache.watched(key, true, 5);
        assert_eq!(
            cache.lookup(id, &number),
            Some(None),
            "the older put is ignored"
        );
        // The watch reaches the removal, then another replica lists the number again.
        cache.watched(key, false, 9);
        cache.watched(key, true, 12);
        assert_eq!(cache.lookup(id, &number), Some(Some(DncList::Global)));
        // A write the watch already passed changes nothing: the watch holds a newer state.
        cache.record(DncList::Global, &number, false, 10);
        assert_eq!(cache.lookup(id, &number), Some(Some(DncList::Global)));
        let state = cache.inner.state.read().expect("state");
        assert!(state.own.is_empty(), "nothing left waiting for the watch");
    }

    #[test]
    fn a_million_numbers_fit_in_tens_of_mib() {
        let cache = DncCache::default();
        for n in 1..=1_000_000_u64 {
            let digits = Digits::parse(&format!("1555{n:07}")).expect("digits");
            let key = DncKey {
                campaign: None,
                digits,
            };
            cache.watched(key, true, n);
        }
        let state = cache.inner.state.read().expect("state");
        let list = &state.lists[&None];
        assert_eq!(list.len(), 1_000_000);
        // hashbrown's table: a power of two of slots at most 7/8 full, each slot the value and
        // one control byte.
        let slots = (list.capacity() * 8 / 7).next_power_of_two();
        let bytes = slots * (std::mem::size_of::<Digits>() + 1);
        assert!(bytes <= 20 << 20, "{bytes} bytes");
    }
}
