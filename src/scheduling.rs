//! The Linux scheduling policy of the worker threads: `SCHED_BATCH` unless `server.scheduling`
//! says `normal`.
//!
//! Under `SCHED_BATCH` a worker woken by a peer's write does not preempt the task running on that
//! core (the MTA, the sender, the other worker): it runs when that task sleeps or its slice ends,
//! and then finds a batch of events where it would have handled one, while the task it left alone
//! batches its own work too. On two cores shared with the sender and the sink this moved 12-20%
//! more messages at 8-21% less CPU per message, and haproxy gains as much under it
//! (docs/benchmarks.md). The cost is latency while every core is busy, up to one scheduler slice
//! (milliseconds) per wake-up, which SMTP never notices; on an idle core a woken worker runs at
//! once either way. Weight and nice value are unchanged, so the worker's share of a busy machine
//! is the same.

use crate::policy::Scheduling;
use thread_priority::unix::{
    set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
    NormalThreadSchedulePolicy, ThreadSchedulePolicy,
};
use thread_priority::{ThreadPriority, ThreadPriorityValue};

#[derive(Debug, thiserror::Error)]
pub enum SchedulingError {
    #[error("cannot read this thread's nice value from /proc/thread-self/stat: {0}")]
    Nice(String),
    #[error("cannot set the {0} scheduling policy: {1}")]
    Set(&'static str, thread_priority::Error),
    /// Started under a policy of its own (real-time, idle): the operator's choice is kept.
    #[error("started under {0:?}, which is kept: server.scheduling chooses only between batch and normal")]
    Kept(ThreadSchedulePolicy),
}

fn policy_of(scheduling: Scheduling) -> ThreadSchedulePolicy {
    ThreadSchedulePolicy::Normal(match scheduling {
        Scheduling::Batch => NormalThreadSchedulePolicy::Batch,
        Scheduling::Normal => NormalThreadSchedulePolicy::Other,
    })
}

/// Puts the calling thread in `scheduling`'s policy, keeping its nice value. A thread started
/// under another policy than these two (`chrt --fifo`, `--idle`...) keeps it.
pub fn apply(scheduling: Scheduling) -> Result<(), SchedulingError> {
    if let Ok(running) = thread_schedule_policy() {
        if scheduling_of(running).is_none() {
            return Err(SchedulingError::Kept(running));
        }
    }
    let policy = policy_of(scheduling);
    // thread-priority sets a nice value with a normal policy, from a 0-99 scale: pick the value
    // that maps to the thread's own, so that a `nice`d mxgate stays as nice as it was started.
    let nice = current_nice()?;
    let keep = priority_for_nice(nice, policy)
        .ok_or_else(|| SchedulingError::Nice(format!("nice {nice} has no equivalent")))?;
    set_thread_priority_and_policy(thread_native_id(), keep, policy)
        .map_err(|e| SchedulingError::Set(scheduling.as_str(), e))
}

/// The value of thread-priority's 0-99 scale that it turns into `nice` under `policy`.
fn priority_for_nice(nice: i32, policy: ThreadSchedulePolicy) -> Option<ThreadPriority> {
    (0..=*ThreadPriorityValue::MAX)
        .filter_map(|p| ThreadPriorityValue::try_from(p).ok())
        .map(ThreadPriority::Crossplatform)
        .find(|p| p.to_posix(policy).ok() == Some(nice))
}

/// The calling thread's policy as the kernel has it: `Some` for the two a worker can be in.
pub fn current() -> Option<Scheduling> {
    scheduling_of(thread_schedule_policy().ok()?)
}

/// Which of the two a kernel policy is, if either.
fn scheduling_of(policy: ThreadSchedulePolicy) -> Option<Scheduling> {
    [Scheduling::Batch, Scheduling::Normal]
        .into_iter()
        .find(|&s| policy_of(s) == policy)
}

/// The calling thread's nice value: field 19 of `/proc/thread-self/stat`, counted after the
/// command name (which may hold spaces and parentheses, so the last `)` ends it).
fn current_nice() -> Result<i32, SchedulingError> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .map_err(|e| SchedulingError::Nice(e.to_string()))?;
    nice_from_stat(&stat).ok_or_else(|| SchedulingError::Nice(format!("unexpected line {stat:?}")))
}

fn nice_from_stat(stat: &str) -> Option<i32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields 3 onwards follow the name; the nice value is field 19.
    after_name.split_whitespace().nth(19 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nice_value_is_read_past_a_name_with_spaces_and_parentheses() {
        let stat =
            "4242 (mxgate (worker) 0) S 1 4242 4242 0 -1 4194368 100 0 0 0 5 3 0 0 20 5 2 0 \
                    1000 0 0";
        assert_eq!(nice_from_stat(stat), Some(5));
        assert_eq!(nice_from_stat("4242 (x) S 1"), None, "too short");
        assert_eq!(nice_from_stat("no name at all"), None);
    }

    /// Each policy is set, read back, and leaves the thread's nice value as it found it: a thread
    /// first made nicer (3 above where it started, as `nice -n 3` would) stays so.
    #[test]
    fn a_thread_moves_between_the_policies_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            let nice = current_nice().unwrap() + 3;
            let normal = policy_of(Scheduling::Normal);
            let nicer = priority_for_nice(nice, normal).unwrap();
            set_thread_priority_and_policy(thread_native_id(), nicer, normal).unwrap();
            assert_eq!(current_nice().unwrap(), nice);
            for scheduling in [Scheduling::Batch, Scheduling::Normal, Scheduling::Batch] {
                apply(scheduling).unwrap();
                assert_eq!(current(), Some(scheduling));
                assert_eq!(current_nice().unwrap(), nice, "{scheduling:?}");
            }
        })
        .join()
        .unwrap();
    }

    /// A thread the operator put under SCHED_IDLE stays there (leaving it needs privileges anyway).
    #[test]
    fn a_thread_under_another_policy_keeps_it() {
        std::thread::spawn(|| {
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle).unwrap();
            let kept = apply(Scheduling::Batch).unwrap_err();
            assert!(
                matches!(kept, SchedulingError::Kept(p) if p == idle),
                "{kept}"
            );
            assert_eq!(thread_schedule_policy().unwrap(), idle);
        })
        .join()
        .unwrap();
    }
}
