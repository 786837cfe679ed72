//! SharedArray with ranks as threads of this process (each with its own
//! group, as a process would have): a block set from one rank reads back
//! bitwise-identical on every rank, for i32/i64/f32/f64, 1-D to 3-D,
//! blocks at the edges; reads during sets are never torn; bad shapes are
//! refused.

use shoal_collectives::{Element, Error, Group, SharedArray};

mod common;
use common::{groups, on_all};

/// Sets blocks (edges included) from every rank in turn and checks every
/// rank reads exactly what a plain array updated the same way holds.
fn blocks<T: Element + From<i8>>(g: &Group, shape: &[usize], make: impl Fn(usize) -> T) {
    let a = SharedArray::<T>::new(g, shape).unwrap();
    let n: usize = shape.iter().product();
    let mut model = vec![T::from(0); n];
    let cases: Vec<(Vec<usize>, Vec<usize>)> = match shape.len() {
        1 => vec![
            (vec![shape[0]], vec![0]),
            (vec![3], vec![shape[0] - 3]),
            (vec![1], vec![0]),
        ],
        2 => vec![
            (vec![shape[0], shape[1]], vec![0, 0]),
            (vec![2, 3], vec![shape[0] - 2, shape[1] - 3]),
            (vec![1, shape[1]], vec![1, 0]),
            (vec![shape[0], 1], vec![0, shape[1] - 1]),
        ],
        _ => vec![
            (shape.to_vec(), vec![0, 0, 0]),
            (
                vec![1, 2, 3],
                vec![shape[0] - 1, shape[1] - 2, shape[2] - 3],
            ),
            (vec![2, 1, 1], vec![0, 0, 0]),
        ],
    };
    for (k, (bs, off)) in cases.iter().enumerate() {
        let from = (k as u32) % g.size();
        let count: usize = bs.iter().product();
        let block: Vec<T> = (0..count).map(|i| make(i * 7 + k)).collect();
        a.set((g.rank() == from).then_some(&block[..]), bs, off, from)
            .unwrap();
        // The model, updated the same way.
        for (j, v) in block.iter().enumerate() {
            let mut rest = j;
            let mut at = vec![0; shape.len()];
            for d in (0..shape.len()).rev() {
                at[d] = off[d] + rest % bs[d];
                rest /= bs[d];
            }
            model[a.index(&at).unwrap()] = *v;
        }
        let r = a.read();
        let same = r.iter().zip(&model).all(|(x, y)| as_bits(x) == as_bits(y));
        assert!(
            same,
            "rank {} differs after case {k}: {:?} vs {:?}",
            g.rank(),
            &r[..r.len().min(20)],
            &model[..model.len().min(20)]
        );
    }
    g.barrier().unwrap();
}

fn as_bits<T: Element>(x: &T) -> Vec<u8> {
    // SAFETY: Element types are plain numbers without padding.
    unsafe { std::slice::from_raw_parts(x as *const T as *const u8, std::mem::size_of::<T>()) }
        .to_vec()
}

#[test]
fn blocks_read_back_bitwise_identical_on_every_rank() {
    on_all(groups(4), |g| {
        blocks::<i32>(g, &[17], |i| i as i32 * -3);
        blocks::<i64>(g, &[5, 9], |i| (i as i64) << 40);
        blocks::<f32>(g, &[4, 6], |i| i as f32 / 3.0);
        blocks::<f64>(g, &[3, 4, 5], |i| (i as f64).sqrt() * -1e300);
        // A NaN's bits come back as they were set.
        blocks::<f64>(g, &[8], |i| {
            f64::from_bits(0x7ff8_0000_0000_0000 | i as u64)
        });
    });
}

#[test]
fn reads_during_sets_see_one_whole_block_or_the_other() {
    on_all(groups(3), |g| {
        let a = SharedArray::<u64>::new(g, &[64, 1024]).unwrap();
        let n = a.len();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            if g.rank() != 0 {
                // Ranks 1 and 2 read as fast as they can meanwhile (from
                // a thread of their own; the rank's own thread sets).
                s.spawn(|| {
                    let mut reads = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = a.read();
                        let first = r[0];
                        assert!(r.iter().all(|x| *x == first), "a torn read");
                        reads += 1;
                    }
                    assert!(reads > 0);
                });
            }
            for round in 1..=40u64 {
                let block = vec![round; n];
                a.set(
                    (g.rank() == 0).then_some(&block[..]),
                    &[64, 1024],
                    &[0, 0],
                    0,
                )
                .unwrap();
                assert_eq!(a.get(&[63, 1023]).unwrap(), round);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        g.barrier().unwrap();
    });
}

#[test]
fn bad_shapes_are_refused() {
    let g = Group::single();
    for shape in [&[][..], &[0][..], &[3, 0][..], &[1; 9][..]] {
        assert!(
            matches!(
                SharedArray::<f64>::new(&g, shape),
                Err(Error::BadArguments(_))
            ),
            "{shape:?}"
        );
    }
    let a = SharedArray::<i32>::new(&g, &[4, 4]).unwrap();
    for (bs, off) in [
        (&[2, 2][..], &[3, 0][..]),
        (&[0, 2][..], &[0, 0][..]),
        (&[2][..], &[0][..]),
        (&[5, 1][..], &[0, 0][..]),
    ] {
        let block = vec![1; bs.iter().product()];
        assert!(
            matches!(a.set(Some(&block), bs, off, 0), Err(Error::BadArguments(_))),
            "{bs:?} at {off:?}"
        );
    }
    // A block of the wrong length for its shape.
    assert!(matches!(
        a.set(Some(&[1, 2, 3]), &[2, 2], &[0, 0], 0),
        Err(Error::BadArguments(_))
    ));
    assert!(a.index(&[4, 0]).is_err());
    assert!(a.get(&[1, 2, 3]).is_err());
}

#[test]
fn ranks_that_disagree_on_the_shape_are_told() {
    on_all(groups(2), |g| {
        let shape = if g.rank() == 0 { [3, 4] } else { [4, 3] };
        assert!(matches!(
            SharedArray::<f32>::new(g, &shape),
            Err(Error::BadArguments(_))
        ));
    });
    // One shape that begins the other.
    on_all(groups(2), |g| {
        let shape: &[usize] = if g.rank() == 0 { &[2, 5] } else { &[2] };
        assert!(matches!(
            SharedArray::<f32>::new(g, shape),
            Err(Error::BadArguments(_))
        ));
    });
    // A shape only one rank gives, and which is refused there: the
    // others are told at once, not at the group's timeout.
    let start = std::time::Instant::now();
    on_all(groups(3), |g| {
        let shape: &[usize] = if g.rank() == 1 { &[4, 0] } else { &[4, 4] };
        let e = SharedArray::<f32>::new(g, shape).map(drop).unwrap_err();
        assert!(matches!(e, Error::BadArguments(_)), "{e}");
        if g.rank() != 1 {
            assert!(e.to_string().contains("rank 1 refused"), "{e}");
        }
    });
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}
