//! Scenario 1: nanoseconds per pick for each strategy at N = 1, 3, 8, 64.
//!
//! The loads change between picks (as streams open and close) so that no
//! strategy is measured on a constant input the optimiser could fold.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use peerpool::pool::{Balancer, Load, Strategy};
use rand::rngs::SmallRng;
use rand::SeedableRng;

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("strategy_pick");
    for n in [1usize, 3, 8, 64] {
        for strategy in Strategy::ALL {
            group.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &n, |b, &n| {
                let mut loads: Vec<Load> = (0..n)
                    .map(|i| Load {
                        active: i % 5,
                        rtt: 0.0005 + (i % 7) as f64 * 0.0001,
                    })
                    .collect();
                let mut balancer = Balancer::new(strategy);
                let mut rng = SmallRng::seed_from_u64(42);
                let mut tick = 0usize;
                b.iter(|| {
                    let i = balancer.pick(black_box(&loads), &mut rng).unwrap_or(0);
                    // Open on the chosen one, close on another: a moving load.
                    loads[i].active += 1;
                    tick = tick.wrapping_add(7);
                    let j = tick % n;
                    loads[j].active = loads[j].active.saturating_sub(1);
                    i
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
