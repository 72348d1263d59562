//! Topic routing against 100,000 bindings: `TopicTrie::matches` for a few routing keys.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use warren::broker::exchange::topic::TopicTrie;

/// 100k distinct patterns: 80 % `aX.bY.*`, 10 % `*.bY.cZ`, 10 % `aX.#.zY`.
fn trie() -> TopicTrie<u32> {
    let mut t = TopicTrie::default();
    for i in 0..100_000u32 {
        let (a, b) = (i % 100, (i / 100) % 1000);
        let pattern = match i % 10 {
            0 => format!("a{a}.#.z{b}"),
            1 => format!("*.b{b}.c{}", i % 50),
            _ => format!("a{a}.b{b}.*"),
        };
        t.insert(&pattern, i);
    }
    t
}

fn routing(c: &mut Criterion) {
    let t = trie();
    let mut g = c.benchmark_group("topic_100k_bindings");
    for key in [
        "a42.b420.c1",    // literal path + star, plus a `*.bY.cZ` match
        "a7.b3.x",        // literal path + star
        "a10.q.r.s.z10",  // walks `#` over several words
        "nomatch.at.all", // only the `*` root edge is tried
    ] {
        g.bench_function(key, |b| {
            b.iter(|| {
                let mut n = 0u32;
                t.matches(black_box(key), |_| n += 1);
                black_box(n)
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! { name = benches; config = config(); targets = routing }
criterion_main!(benches);
