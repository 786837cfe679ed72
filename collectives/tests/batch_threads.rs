//! Batch with ranks as threads of this process: every task runs exactly
//! once and ends Done, state files say so and a second run does nothing;
//! failed tasks. (A worker killed with its task: in the workspace's
//! `tests/collectives.rs`, with real processes.)

use shoal_collectives::batch::{Batch, BatchOptions, TaskState};
use std::sync::{Arc, Mutex};

mod common;
use common::{groups, on_all};

/// (rank, worker rank, task) of every task a rank was handed.
type Runs = Arc<Mutex<Vec<(u32, u32, u64)>>>;

fn run_batch(dir: &std::path::Path, runs: &Runs) -> Vec<Option<Vec<TaskState>>> {
    let (dir, runs) = (dir.to_path_buf(), runs.clone());
    on_all(groups(4), move |g| {
        let o = BatchOptions::default().state_dir(&dir);
        let mut b = Batch::new(g, 25, 2, &o).unwrap();
        assert_eq!(b.worker().size(), 2);
        while let Some(t) = b.next_task().unwrap() {
            runs.lock().unwrap().push((g.rank(), b.worker().rank(), t));
        }
        b.finish_all().unwrap()
    })
}

#[test]
fn twenty_five_tasks_over_worker_groups_of_two_run_once_and_resume() {
    let dir = std::env::temp_dir().join(format!("shoal-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs: Runs = Arc::default();
    let states = run_batch(&dir, &runs);
    // Rank 0 sees every task Done.
    let s = states[0].as_ref().unwrap();
    assert_eq!(s.len(), 25);
    assert!(s.iter().all(|x| *x == TaskState::Done), "{s:?}");
    // Each task was handed to exactly one worker group (both its ranks).
    let r = runs.lock().unwrap().clone();
    for t in 0..25u64 {
        let got: Vec<_> = r.iter().filter(|x| x.2 == t).collect();
        assert_eq!(got.len(), 2, "task {t}: {got:?}");
        assert_eq!(got[0].0 / 2, got[1].0 / 2, "task {t} in two workers");
    }
    // The state files say so.
    for t in 0..25 {
        let s = std::fs::read_to_string(dir.join(format!("task-{t}"))).unwrap();
        assert_eq!(s, "done");
    }
    // A second run does nothing.
    let again: Runs = Arc::default();
    let states = run_batch(&dir, &again);
    assert!(again.lock().unwrap().is_empty());
    assert!(states[0]
        .as_ref()
        .unwrap()
        .iter()
        .all(|x| *x == TaskState::Done));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failed_tasks_end_failed_and_the_rest_done() {
    let out = on_all(groups(2), |g| {
        let mut b = Batch::new(g, 10, 1, &BatchOptions::default()).unwrap();
        while let Some(t) = b.next_task().unwrap() {
            if t % 3 == 0 {
                b.fail_task().unwrap();
            }
        }
        b.finish_all().unwrap()
    });
    let s = out[0].as_ref().unwrap();
    for (t, x) in s.iter().enumerate() {
        let want = if t % 3 == 0 {
            TaskState::Failed
        } else {
            TaskState::Done
        };
        assert_eq!(*x, want, "task {t}");
    }
}

#[test]
fn arguments_refused_on_one_rank_are_told_to_every_rank_at_once() {
    let start = std::time::Instant::now();
    on_all(groups(3), |g| {
        // Worker groups of 0 ranks, on rank 1 only.
        let k = if g.rank() == 1 { 0 } else { 1 };
        let e = Batch::new(g, 4, k, &BatchOptions::default())
            .map(drop)
            .unwrap_err();
        assert!(
            matches!(e, shoal_collectives::Error::BadArguments(_)),
            "{e}"
        );
        if g.rank() != 1 {
            assert!(e.to_string().contains("rank 1 refused"), "{e}");
        }
    });
    // Not at the group's timeout.
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}
