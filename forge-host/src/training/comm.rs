//! How data-parallel ranks agree on a step (`--devices`): each rank computes the gradients of its
//! shard of the global batch, then one all-reduce per step averages the packed adapter gradients
//! (with the loss parts) over the ranks, and every rank applies the same clipped update, so they stay
//! identical and the result equals one device's training on the global batch up to floating-point
//! order. [`Communicator`] is what the training loop needs; [`LocalGroup`] is its in-process
//! implementation for ranks on the CPU, which lets CI run the whole path (sharding, the all-reduce,
//! clipping on the global gradient).
use std::sync::{Arc, Condvar, Mutex};

use crate::{Error, Result};

/// One rank's view of its group.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Replaces `data` on every rank by its mean over the ranks. Every rank gets the same bits.
    fn all_reduce_mean(&self, data: &mut [f32]) -> Result<()>;
    /// Tells the other ranks this one failed, so none waits for it forever.
    fn abort(&self, why: &str);
    /// The rank that failed first, if one did: the others' errors only echo it.
    fn first_failure(&self) -> Option<usize>;
}

/// Ranks in one process, meeting at a barrier.
pub struct LocalGroup {
    state: Mutex<Meeting>,
    met: Condvar,
    world: usize,
}

#[derive(Default)]
struct Meeting {
    /// Each rank's contribution this round.
    slots: Vec<Vec<f32>>,
    arrived: usize,
    round: u64,
    /// The first failure of any rank: (rank, why).
    failed: Option<(usize, String)>,
}

/// One rank of a [`LocalGroup`].
#[derive(Clone)]
pub struct LocalRank {
    group: Arc<LocalGroup>,
    rank: usize,
}

impl LocalGroup {
    /// The `world` ranks of a new group.
    pub fn ranks(world: usize) -> Vec<LocalRank> {
        let meeting = Meeting { slots: vec![Vec::new(); world], ..Meeting::default() };
        let group = Arc::new(LocalGroup { state: Mutex::new(meeting), met: Condvar::new(), world });
        (0..world).map(|rank| LocalRank { group: group.clone(), rank }).collect()
    }
}

impl LocalGroup {
    /// Runs `work` once per rank of a new group of `world`: rank 0 on this thread, the others on
    /// their own. A rank that fails (or panics) frees the others, which would otherwise wait for it
    /// at the all-reduce; the result is rank 0's, or the error of the rank that failed first, naming
    /// it (rank 0's own error keeps its kind and its hint, such as out of memory).
    pub fn run<T>(world: usize, work: impl Fn(&LocalRank) -> Result<T> + Sync) -> Result<T> {
        let ranks = LocalGroup::ranks(world);
        let run = |rank: &LocalRank| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(rank)))
                .unwrap_or_else(|_| Err(Error::Strategy("it panicked".into())));
            if let Err(e) = &result {
                rank.abort(&e.to_string());
            }
            result
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = ranks[1..].iter().map(|rank| scope.spawn(|| run(rank).map(drop))).collect();
            let lead = run(&ranks[0]);
            let mut others =
                others.into_iter().map(|h| h.join().expect("a rank's panic is caught in the rank"));
            match ranks[0].first_failure() {
                None | Some(0) => lead,
                Some(rank) => match others.nth(rank - 1) {
                    // An interrupt seen first by another rank is still an interrupt.
                    Some(Err(e @ Error::Interrupted(_))) => Err(e),
                    other => {
                        let e = other.and_then(Result::err).map_or_else(String::new, |e| e.to_string());
                        Err(Error::Strategy(format!("rank {rank} failed: {e}")))
                    }
                },
            }
        })
    }
}

impl LocalRank {
    /// Waits until every rank has arrived in this round (or one failed).
    fn meet<'a>(
        &'a self,
        mut meeting: std::sync::MutexGuard<'a, Meeting>,
    ) -> Result<std::sync::MutexGuard<'a, Meeting>> {
        let round = meeting.round;
        meeting.arrived += 1;
        if meeting.arrived == self.group.world {
            meeting.arrived = 0;
            meeting.round += 1;
            self.group.met.notify_all();
        }
        while meeting.round == round && meeting.failed.is_none() {
            meeting = self.group.met.wait(meeting).unwrap_or_else(|e| e.into_inner());
        }
        match &meeting.failed {
            Some((rank, why)) => Err(Error::Strategy(format!("rank {rank} failed: {why}"))),
            None => Ok(meeting),
        }
    }
}

impl Communicator for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.group.world
    }

    fn all_reduce_mean(&self, data: &mut [f32]) -> Result<()> {
        let mut meeting = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
        meeting.slots[self.rank] = data.to_vec();
        let meeting = self.meet(meeting)?;
        // Summed in rank order by every rank: the same bits everywhere, whatever the arrival order.
        let scale = 1.0 / self.group.world as f32;
        for (i, value) in data.iter_mut().enumerate() {
            *value = meeting.slots.iter().map(|s| s[i]).sum::<f32>() * scale;
        }
        // Nobody overwrites a slot before everyone has read this round's.
        self.meet(meeting).map(drop)
    }

    fn abort(&self, why: &str) {
        let mut meeting = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
        meeting.failed.get_or_insert((self.rank, why.to_string()));
        self.group.met.notify_all();
    }

    fn first_failure(&self) -> Option<usize> {
        self.group.state.lock().unwrap_or_else(|e| e.into_inner()).failed.as_ref().map(|(rank, _)| *rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_the_mean_and_a_failure_frees_the_others() {
        let ranks = LocalGroup::ranks(3);
        let means: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|r| {
                    s.spawn(move || {
                        let mut data = vec![r.rank() as f32, 1.0];
                        r.all_reduce_mean(&mut data).unwrap();
                        data
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(means.iter().all(|m| m == &[1.0, 1.0]), "{means:?}");
        let ranks = LocalGroup::ranks(2);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| ranks[0].all_reduce_mean(&mut [1.0]));
            ranks[1].abort("out of memory");
            let err = waiting.join().unwrap().unwrap_err().to_string();
            assert!(err.contains("rank 1 failed: out of memory"), "{err}");
            assert_eq!(ranks[0].first_failure(), Some(1));
        });
    }
}
