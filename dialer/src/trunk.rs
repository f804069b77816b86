//! A dialer replica's trunk: its lines (`dialer.max_calls`), shared fairly by the campaigns
//! that are awake ([`crate::worker`]); a dormant campaign is not counted.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use ccm_core::metrics::gauge;
use tokio::sync::Semaphore;

/// A dialer replica's trunk: its lines and how many campaigns are awake to share them.
#[derive(Debug)]
pub struct Trunk {
    pub(crate) lines: Arc<Semaphore>,
    capacity: usize,
    campaigns: AtomicUsize,
}

impl Trunk {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            lines: Arc::new(Semaphore::new(capacity)),
            capacity,
            campaigns: AtomicUsize::new(0),
        }
    }

    /// Lines one campaign may take in one pull.
    pub fn fair_share(&self) -> usize {
        (self.capacity / self.campaigns.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// Lines in use now.
    pub fn busy(&self) -> usize {
        self.capacity - self.lines.available_permits()
    }
}

/// Counts the worker among the trunk's active campaigns while it is awake.
pub(crate) struct Sharing {
    trunk: Arc<Trunk>,
    counted: bool,
}

impl Sharing {
    pub(crate) fn join(trunk: Arc<Trunk>) -> Self {
        let mut sharing = Self {
            trunk,
            counted: false,
        };
        sharing.wake();
        sharing
    }

    pub(crate) fn wake(&mut self) {
        if !self.counted {
            self.counted = true;
            let n = self.trunk.campaigns.fetch_add(1, Ordering::Relaxed) + 1;
            gauge!("ccm_dialer_active_campaigns").set(n as f64);
        }
    }

    pub(crate) fn sleep(&mut self) {
        if self.counted {
            self.counted = false;
            let n = self.trunk.campaigns.fetch_sub(1, Ordering::Relaxed) - 1;
            gauge!("ccm_dialer_active_campaigns").set(n as f64);
        }
    }
}

impl Drop for Sharing {
    fn drop(&mut self) {
        self.sleep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_share_divides_the_trunk_among_campaigns() {
        let trunk = Trunk::new(100);
        assert_eq!(trunk.fair_share(), 100);
        trunk.campaigns.store(3, Ordering::Relaxed);
        assert_eq!(trunk.fair_share(), 33);
        trunk.campaigns.store(500, Ordering::Relaxed);
        assert_eq!(trunk.fair_share(), 1);
        assert_eq!(trunk.busy(), 0);
    }

    #[test]
    fn dormant_campaigns_leave_the_fair_share() {
        let trunk = Arc::new(Trunk::new(100));
        let mut a = Sharing::join(trunk.clone());
        let _b = Sharing::join(trunk.clone());
        assert_eq!(trunk.fair_share(), 50);
        a.sleep();
        a.sleep();
        assert_eq!(trunk.fair_share(), 100);
        a.wake();
        assert_eq!(trunk.fair_share(), 50);
        drop(a);
        assert_eq!(trunk.campaigns.load(Ordering::Relaxed), 1);
    }
}
