//! Rpc between threads: every worker's reply in worker order, failures
//! passed back, aggregates and handlers, typed calls, a worker that does
//! not answer named, readiness naming who never came.

use shoal_channel::{Error, Handle, Rpc, RpcOptions, RpcWorker};
use std::time::{Duration, Instant};

fn opts(workers: u32) -> RpcOptions {
    RpcOptions::new(workers)
        .capacity(1 << 16)
        .reply_capacity(1 << 16)
        .call_timeout(Duration::from_secs(20))
}

/// Workers that answer "i:request", and fail requests saying "fail".
fn spawn_workers(rpc: &Rpc, o: &RpcOptions) -> Vec<std::thread::JoinHandle<u64>> {
    (0..o.workers)
        .map(|i| {
            let mut w = RpcWorker::attach_with(rpc.handle(), i, o).unwrap();
            std::thread::spawn(move || {
                w.serve(|req| {
                    if &req[..] == b"fail" {
                        return Err(format!("worker {i} refuses"));
                    }
                    Ok([format!("{i}:").as_bytes(), &req[..]].concat())
                })
                .unwrap()
            })
        })
        .collect()
}

#[test]
fn every_worker_answers_in_worker_order_and_failures_come_back() {
    let o = opts(3);
    let mut rpc = Rpc::create(&o).unwrap();
    let workers = spawn_workers(&rpc, &o);
    rpc.wait_until_ready(Duration::from_secs(10)).unwrap();
    for n in 0..50u32 {
        let req = format!("req {n}");
        let replies = rpc.call(req.as_bytes()).unwrap();
        assert_eq!(replies.len(), 3);
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r.worker.index, i as u32);
            assert_eq!(r.ok().unwrap(), format!("{i}:{req}").as_bytes());
        }
    }
    let replies = rpc.call(b"fail").unwrap();
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(
            r.result.as_ref().unwrap_err(),
            &format!("worker {i} refuses")
        );
        match r.ok() {
            Err(Error::WorkerFailed { index, status, .. }) => {
                assert_eq!(index, i as u32);
                assert!(status.contains("refuses"));
            }
            other => panic!("{other:?}"),
        }
    }
    // An aggregate, and a handler seeing each reply as it comes.
    let total = rpc
        .call_fold(b"x", 0usize, |acc, r| acc + r.ok().map_or(0, |b| b.len()))
        .unwrap();
    assert_eq!(total, 3 * 3);
    let mut seen = Vec::new();
    let all = rpc.call_each(b"y", |r| seen.push(r.worker.index)).unwrap();
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
    assert_eq!(all.len(), 3);
    drop(rpc);
    for w in workers {
        assert_eq!(w.join().unwrap(), 50 + 3);
    }
}

#[test]
fn typed_requests_and_replies_are_read_in_place() {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Load {
        model: String,
        shards: u32,
    }
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Loaded {
        worker: u32,
        bytes: u64,
    }
    let o = opts(2);
    let mut rpc = Rpc::create(&o).unwrap();
    let workers: Vec<_> = (0..2u32)
        .map(|i| {
            let mut w = RpcWorker::attach_with(rpc.handle(), i, &o).unwrap();
            std::thread::spawn(move || {
                while let Some(req) = w.next_request().unwrap() {
                    let load = req.archived::<Load>().unwrap();
                    let answer = Loaded {
                        worker: i,
                        bytes: u64::from(load.shards.to_native()) * load.model.len() as u64,
                    };
                    w.reply_value(&req, &answer).unwrap();
                }
            })
        })
        .collect();
    rpc.wait_until_ready(Duration::from_secs(10)).unwrap();
    let replies = rpc
        .call_value(&Load {
            model: "tiny".into(),
            shards: 8,
        })
        .unwrap();
    for (i, r) in replies.iter().enumerate() {
        let l = r.result.as_ref().unwrap().archived::<Loaded>().unwrap();
        assert_eq!((l.worker.to_native(), l.bytes.to_native()), (i as u32, 32));
    }
    drop(rpc);
    for w in workers {
        w.join().unwrap();
    }
}

/// A live worker that does not answer in time is named (not dead), the
/// others' replies come with the error, and the next call still works
/// (the late reply to the earlier call is dropped).
#[test]
fn a_worker_that_does_not_answer_in_time_is_named() {
    let o = opts(2).call_timeout(Duration::from_millis(300));
    let mut rpc = Rpc::create(&o).unwrap();
    let mut fast = RpcWorker::attach_with(rpc.handle(), 0, &o).unwrap();
    let mut slow = RpcWorker::attach_with(rpc.handle(), 1, &o).unwrap();
    let f = std::thread::spawn(move || fast.serve(|r| Ok(r.to_vec())).unwrap());
    let s = std::thread::spawn(move || {
        let mut first = true;
        slow.serve(|r| {
            if std::mem::take(&mut first) {
                std::thread::sleep(Duration::from_millis(800));
            }
            Ok(r.to_vec())
        })
        .unwrap()
    });
    rpc.wait_until_ready(Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    match rpc.call(b"one") {
        Err(Error::NoReply {
            missing, replies, ..
        }) => {
            assert_eq!(missing.len(), 1);
            assert_eq!((missing[0].index, missing[0].dead), (1, false));
            assert_eq!(missing[0].pid, std::process::id());
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].ok().unwrap(), b"one");
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    // The late answer to "one" is not taken for the answer to "two".
    std::thread::sleep(Duration::from_millis(700));
    let replies = rpc.call(b"two").unwrap();
    assert!(replies.iter().all(|r| r.ok().unwrap() == b"two"));
    assert!(rpc.dead_workers().is_empty());
    drop(rpc);
    assert_eq!(f.join().unwrap(), 2);
    assert_eq!(s.join().unwrap(), 2);
}

#[test]
fn readiness_names_the_workers_that_never_came() {
    let o = opts(3);
    let mut rpc = Rpc::create(&o).unwrap();
    let _w1 = RpcWorker::attach_with(rpc.handle(), 1, &o).unwrap();
    match rpc.wait_until_ready(Duration::from_millis(300)) {
        Err(Error::WorkersMissing { missing, .. }) => assert_eq!(missing, [0, 2]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rpc_handles_travel_as_text_and_bytes_and_are_refused_by_other_kinds() {
    let rpc = Rpc::create(&opts(1)).unwrap();
    let text = rpc.handle().to_string();
    assert!(text.starts_with("rpc@shm://"), "{text}");
    let back: Handle = text.parse().unwrap();
    assert_eq!(&back, rpc.handle());
    assert_eq!(Handle::from_bytes(&back.to_bytes().unwrap()).unwrap(), back);
    assert!(matches!(
        shoal_channel::BroadcastReceiver::attach(&back, 0),
        Err(Error::WrongKind { .. })
    ));
    let q = shoal_channel::WorkQueue::create(&Default::default()).unwrap();
    assert!(matches!(
        RpcWorker::attach(q.handle(), 0),
        Err(Error::WrongKind { .. })
    ));
    let bad = text.replace('+', "-");
    assert!(matches!(bad.parse::<Handle>(), Err(Error::BadHandle(_))));
}

/// A call awaited from a tokio task: the same replies, and a handler
/// that sees each as it comes.
#[test]
fn calls_can_be_awaited() {
    let o = opts(2);
    let mut rpc = Rpc::create(&o).unwrap();
    let workers = spawn_workers(&rpc, &o);
    rpc.wait_until_ready(Duration::from_secs(10)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rpc = rt.block_on(async move {
        tokio::spawn(async move {
            for n in 0..20 {
                let req = format!("a{n}");
                let replies = rpc.call_async(req.as_bytes()).await.unwrap();
                for (i, r) in replies.iter().enumerate() {
                    assert_eq!(r.ok().unwrap(), format!("{i}:{req}").as_bytes());
                }
            }
            let mut seen = 0;
            let all = rpc.call_each_async(b"each", |_| seen += 1).await.unwrap();
            assert_eq!((seen, all.len()), (2, 2));
            rpc
        })
        .await
        .unwrap()
    });
    drop(rpc);
    for w in workers {
        assert_eq!(w.join().unwrap(), 21);
    }
}

/// Workers reached over the network (loopback) beside a local one: the
/// same replies in worker order; a remote worker that leaves is named
/// dead (its bridge counted it gone), not waited for.
#[cfg(any(feature = "nng", feature = "quic"))]
fn remote_workers(bind: &str) {
    let o = opts(3)
        .remote(2, bind)
        .lease(Duration::from_millis(800))
        .call_timeout(Duration::from_secs(20));
    let mut rpc = Rpc::create(&o).unwrap();
    assert!(rpc.handle().remote().is_some());
    let text = rpc.handle().to_string();
    let back: Handle = text.parse().unwrap();
    let mut workers = Vec::new();
    for i in 0..3u32 {
        let mut w = if i == 0 {
            RpcWorker::attach_with(&back, i, &o).unwrap()
        } else {
            RpcWorker::attach_remote(&back, i, &o).unwrap()
        };
        assert_eq!(w.is_remote(), i > 0);
        workers.push(std::thread::spawn(move || {
            // Worker 2 answers twice, then leaves.
            let mut n = 0;
            while let Some(req) = w.next_request().unwrap() {
                if &req[..] == b"fail" {
                    w.fail(&req, &format!("worker {i} refuses")).unwrap();
                } else {
                    w.reply(&req, &[format!("{i}:").as_bytes(), &req[..]].concat())
                        .unwrap();
                }
                n += 1;
                if i == 2 && n == 2 {
                    return n;
                }
            }
            n
        }));
    }
    rpc.wait_until_ready(Duration::from_secs(20)).unwrap();
    let replies = rpc.call(b"a").unwrap();
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.worker.index, i as u32);
        assert_eq!(r.ok().unwrap(), format!("{i}:a").as_bytes());
    }
    let replies = rpc.call(b"fail").unwrap();
    assert!(replies
        .iter()
        .all(|r| matches!(r.ok(), Err(Error::WorkerFailed { .. }))));
    // Worker 2 is gone: named dead within its lease, the others answer.
    let started = Instant::now();
    match rpc.call(b"b") {
        Err(Error::NoReply {
            missing, replies, ..
        }) => {
            assert_eq!(missing.len(), 1);
            assert_eq!((missing[0].index, missing[0].dead), (2, true));
            assert_eq!(replies.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rpc.dead_workers(), [2]);
    // Later calls do not wait for it.
    assert_eq!(rpc.call(b"c").unwrap().len(), 2);
    drop(rpc);
    let counts: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(counts, [4, 4, 2]);
}

/// An Rpc with a remote worker made, called and dropped inside a tokio
/// runtime (`multi`: the multi-thread kind, else current-thread): its
/// network publisher blocks on a runtime of its own, which must not
/// happen on the caller's runtime thread.
#[cfg(any(feature = "nng", feature = "quic"))]
fn remote_worker_from_async(bind: &str, multi: bool) {
    let o = opts(2)
        .remote(1, bind)
        .call_timeout(Duration::from_secs(20));
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .unwrap();
    rt.block_on(async {
        let mut rpc = Rpc::create(&o).unwrap();
        let h = rpc.handle().clone();
        let workers: Vec<_> = (0..2u32)
            .map(|i| {
                let (h, o) = (h.clone(), o.clone());
                std::thread::spawn(move || {
                    let mut w = if i == 0 {
                        RpcWorker::attach_with(&h, i, &o).unwrap()
                    } else {
                        RpcWorker::attach_remote(&h, i, &o).unwrap()
                    };
                    while let Some(req) = w.next_request().unwrap() {
                        w.reply(&req, &[format!("{i}:").as_bytes(), &req[..]].concat())
                            .unwrap();
                    }
                })
            })
            .collect();
        rpc.wait_until_ready(Duration::from_secs(20)).unwrap();
        for n in 0..3 {
            let req = format!("r{n}");
            let replies = rpc.call_async(req.as_bytes()).await.unwrap();
            for (i, r) in replies.iter().enumerate() {
                assert_eq!(r.ok().unwrap(), format!("{i}:{req}").as_bytes());
            }
        }
        drop(rpc);
        for w in workers {
            w.join().unwrap();
        }
    });
}

#[cfg(feature = "nng")]
#[test]
fn a_remote_worker_is_called_from_async_code_over_nng() {
    remote_worker_from_async("nng+tcp://127.0.0.1:0", false);
    remote_worker_from_async("nng+tcp://127.0.0.1:0", true);
}

#[cfg(feature = "quic")]
#[test]
fn a_remote_worker_is_called_from_async_code_over_quic() {
    remote_worker_from_async("quic://127.0.0.1:0", false);
    remote_worker_from_async("quic://127.0.0.1:0", true);
}

#[cfg(feature = "nng")]
#[test]
fn remote_workers_over_nng() {
    remote_workers("nng+tcp://127.0.0.1:0");
}

#[cfg(feature = "quic")]
#[test]
fn remote_workers_over_quic() {
    remote_workers("quic://127.0.0.1:0");
}
