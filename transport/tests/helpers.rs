//! Blocking wrappers on plain threads, and the handler-driven subscriber,
//! over every wire (issue 7 items 1 and 8).

use shoal_transport::blocking::Blocking;
use shoal_transport::handler::spawn_handler;
use shoal_transport::{Address, Error, InProc, Options, Publisher, Wire};
use std::sync::mpsc;

mod common;

use common::SEC;

fn blocking_threads<W: Wire>(a: Address) {
    let o = Options::default();
    let mut p = Blocking::new(W::bind_publisher(&a, &o)).unwrap();
    let (a2, o2) = (a.clone(), o.clone());
    let reader = std::thread::spawn(move || {
        let mut s = Blocking::new(W::connect_subscriber(&a2, &o2)).unwrap();
        let mut got = Vec::new();
        loop {
            match s.receive_timeout(5 * SEC) {
                Ok(f) => got.push(f.to_vec()),
                Err(Error::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        got
    });
    p.wait_for_subscribers(1, 5 * SEC).unwrap();
    for i in 0..100u32 {
        p.publish(b"", &i.to_le_bytes()).unwrap();
    }
    drop(p);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 100);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, g)| g[..] == (i as u32).to_le_bytes()));
}

fn handler_task<W: Wire>(a: Address) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let o = Options::default();
        let mut p = W::bind_publisher(&a, &o).await.unwrap();
        // Stopped by its handle.
        let s = W::connect_subscriber(&a, &o).await.unwrap();
        let (tx, rx) = mpsc::channel();
        let (etx, erx) = mpsc::channel();
        let task = spawn_handler(
            s,
            move |f| tx.send(f.to_vec()).unwrap(),
            move |end| etx.send(end.is_ok()).unwrap(),
        );
        // And one that ends with the publisher.
        let s2 = W::connect_subscriber(&a, &o).await.unwrap();
        let (etx2, erx2) = mpsc::channel();
        let task2 = spawn_handler(s2, |_| {}, move |end| etx2.send(end.is_ok()).unwrap());
        p.wait_for_subscribers(2, 5 * SEC).await.unwrap();
        for i in 0..10u8 {
            p.send(b"", &[i]).await.unwrap();
        }
        for i in 0..10u8 {
            assert_eq!(rx.recv_timeout(5 * SEC).unwrap(), [i]);
        }
        task.stop().await.unwrap();
        assert!(erx.recv_timeout(SEC).unwrap(), "stop is a clean end");
        drop(p);
        assert!(
            erx2.recv_timeout(5 * SEC).unwrap(),
            "a close is a clean end"
        );
        task2.stop().await.unwrap();
    });
}

#[test]
fn blocking_wrappers_on_plain_threads_inproc() {
    blocking_threads::<InProc>("inproc://h-blocking".parse().unwrap());
}

#[test]
fn handler_subscriber_inproc() {
    handler_task::<InProc>("inproc://h-handler".parse().unwrap());
}

#[cfg(feature = "shm")]
#[test]
fn blocking_wrappers_on_plain_threads_shm() {
    let a = format!("shm://h-blocking-{}", std::process::id())
        .parse()
        .unwrap();
    blocking_threads::<shoal_transport::Shm>(a);
}

#[cfg(feature = "shm")]
#[test]
fn handler_subscriber_shm() {
    let a = format!("shm://h-handler-{}", std::process::id())
        .parse()
        .unwrap();
    handler_task::<shoal_transport::Shm>(a);
}
