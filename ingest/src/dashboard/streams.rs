//! How many event streams each token holds open, capped at
//! `ingest.dashboard.max_streams_per_token`.
//!
//! Each open stream holds a [`StreamGuard`] inside its response body; the count drops when
//! the body is dropped, however the stream ended (the browser left, ingest stopped).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use crate::auth::TokenId;

/// Open streams per token.
#[derive(Debug)]
pub struct StreamCounts {
    /// 0: no cap.
    max: u32,
    open: Arc<Mutex<HashMap<TokenId, u32>>>,
}

impl StreamCounts {
    pub fn new(max_per_token: u32) -> Self {
        Self {
            max: max_per_token,
            open: Arc::default(),
        }
    }

    /// A place for one more stream of `token`, or `None` when it holds its cap.
    pub fn open(&self, token: TokenId) -> Option<StreamGuard> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(token).or_insert(0);
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(StreamGuard {
            token,
            open: self.open.clone(),
        })
    }

    /// Streams `token` holds open now.
    #[cfg(test)]
    pub fn count(&self, token: TokenId) -> u32 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&token).copied().unwrap_or(0)
    }
}

/// One open stream's place; dropping it frees the place.
#[derive(Debug)]
pub struct StreamGuard {
    token: TokenId,
    open: Arc<Mutex<HashMap<TokenId, u32>>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.token) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Only tokens with open streams are kept.
                open.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u8) -> TokenId {
        TokenId::from_bytes(&[n; 16]).expect("16 bytes")
    }

    #[test]
    fn a_token_holds_its_cap_and_a_dropped_guard_frees_a_place() {
        let counts = StreamCounts::new(2);
        let first = counts.open(token(1)).expect("first");
        let second = counts.open(token(1)).expect("second");
        assert!(counts.open(token(1)).is_none(), "over the cap");
        assert!(counts.open(token(2)).is_some(), "another token");
        drop(first);
        assert_eq!(counts.count(token(1)), 1);
        let third = counts.open(token(1)).expect("a freed place");
        drop((second, third));
        assert_eq!(counts.count(token(1)), 0);
        assert!(counts.open.lock().expect("lock").is_empty(), "nothing kept");
    }

    #[test]
    fn zero_means_no_cap() {
        let counts = StreamCounts::new(0);
        let guards: Vec<_> = (0..100).map(|_| counts.open(token(1))).collect();
        assert!(guards.iter().all(Option::is_some));
    }
}
