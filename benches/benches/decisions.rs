//! Micro-benchmarks of the decisions pgherd makes for every transaction:
//! which standby serves a read (`pgherd_proxy::balance::choose`, round
//! robin and least connections over weighted standbys) and taking an idle
//! server from a pool without waiting, then giving it back
//! (`Pool::try_checkout_idle` and `Guard::release`). Run with
//! `cargo bench -p pgherd-bench --bench decisions`.
//!
//! For comparing changes to these pieces; the end-to-end cost per
//! transaction is `pgherd-bench` and `benches/callgrind.sh`.

use criterion::{criterion_group, criterion_main, Criterion};
use pgherd_config::Balance;
use pgherd_pool::Pool;
use pgherd_proxy::balance::{choose, Candidate};

/// Two standbys of equal priority, weights 1 and 2, and a primary that
/// serves no reads (not a candidate), as `route` would pass them.
fn standbys() -> [Candidate; 2] {
    [
        Candidate {
            node: 1,
            weight: 1,
            priority: 100,
            load: 3,
        },
        Candidate {
            node: 2,
            weight: 2,
            priority: 100,
            load: 4,
        },
    ]
}

fn routing(c: &mut Criterion) {
    let candidates = standbys();
    let mut group = c.benchmark_group("choose_standby");
    for (name, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("leastconn", Balance::LeastConn),
    ] {
        let mut turn = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                turn = turn.wrapping_add(1);
                choose(
                    std::hint::black_box(candidates.iter().copied()),
                    balance,
                    turn,
                    3,
                )
            })
        });
    }
    group.finish();
}

/// A pool of 20 with 20 idle connections opened with two different
/// startup parameter sets (what a client matches on), as in steady state.
fn pooling(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime for the pool's semaphores");
    let pool: Pool<u32> = Pool::new(20);
    rt.block_on(async {
        let mut guards = Vec::new();
        for i in 0..20 {
            let mut g = pool
                .checkout(std::time::Duration::from_secs(1), |_| false)
                .await
                .expect("a free slot");
            g.set(i % 2);
            guards.push(g);
        }
        for g in guards {
            g.release();
        }
    });
    c.bench_function("pool/try_checkout_idle_and_release", |b| {
        b.iter(|| {
            let guard = pool
                .try_checkout_idle(|&params| params == 1, |_| true)
                .expect("an idle connection");
            guard.release();
        })
    });
}

criterion_group!(benches, routing, pooling);
criterion_main!(benches);
