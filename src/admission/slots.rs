//! The slot pool: as many permits as the backend has session slots. A class may take a slot only
//! while occupancy is below its share of the pool; nobody waits for one. Permits are released on
//! drop, whatever ends the session.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct SlotPool {
    capacity: AtomicUsize,
    in_use: AtomicUsize,
    by_class: Vec<AtomicUsize>,
}

/// A held slot; dropping it frees the slot.
pub struct SlotPermit {
    pool: Arc<SlotPool>,
    class: usize,
}

impl SlotPool {
    pub fn new(capacity: usize, classes: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: AtomicUsize::new(capacity),
            in_use: AtomicUsize::new(0),
            by_class: (0..classes).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// A new capacity, effective for the next acquisition; held permits stay valid.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    pub fn in_use_by(&self, class: usize) -> usize {
        self.by_class
            .get(class)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Occupancy as a share of capacity (0.0..=1.0, more if capacity shrank under live sessions).
    pub fn occupancy(&self) -> f64 {
        self.in_use() as f64 / self.capacity().max(1) as f64
    }

    /// Takes a slot for `class` if occupancy is below `max_share` of the pool.
    pub fn try_acquire(self: &Arc<Self>, class: usize, max_share: f64) -> Option<SlotPermit> {
        let limit = limit_for(self.capacity(), max_share);
        let mut current = self.in_use.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.in_use.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        if let Some(c) = self.by_class.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Some(SlotPermit {
            pool: self.clone(),
            class,
        })
    }
}

/// Slots a class may fill: its share of the capacity, rounded down, at least 1 for a share above 0.
pub fn limit_for(capacity: usize, max_share: f64) -> usize {
    if max_share <= 0.0 {
        return 0;
    }
    ((capacity as f64 * max_share).floor() as usize).clamp(1, capacity)
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Ordering::AcqRel);
        if let Some(c) = self.pool.by_class.get(self.class) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_a_pool_of_ten() {
        // class 0 trusted (1.0), 1 good (0.9), 2 neutral (0.6)
        let pool = SlotPool::new(10, 3);
        let neutral: Vec<_> = (0..10).filter_map(|_| pool.try_acquire(2, 0.6)).collect();
        assert_eq!(neutral.len(), 6, "neutral stops at 60%");
        let good: Vec<_> = (0..10).filter_map(|_| pool.try_acquire(1, 0.9)).collect();
        assert_eq!(good.len(), 3, "good fills up to 90%");
        let trusted: Vec<_> = (0..10).filter_map(|_| pool.try_acquire(0, 1.0)).collect();
        assert_eq!(trusted.len(), 1, "trusted takes the last slot");
        assert_eq!(
            (pool.in_use(), pool.in_use_by(2), pool.in_use_by(1)),
            (10, 6, 3)
        );
        drop(neutral);
        assert_eq!(pool.in_use(), 4);
        assert!(pool.try_acquire(2, 0.6).is_some());
        drop(good);
        drop(trusted);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn limits() {
        assert_eq!(limit_for(10, 0.6), 6);
        assert_eq!(limit_for(10, 0.05), 1);
        assert_eq!(limit_for(10, 0.0), 0);
        assert_eq!(limit_for(3, 1.0), 3);
    }
}
