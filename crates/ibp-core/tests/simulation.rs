//! Thousands of seeded simulations of 3–9 monitors under loss, duplication, reordering,
//! partitions, crashes and clock skew, checking the invariants of `ibp_core::sim`.
//!
//! * `IBP_SIM_SEEDS=N` runs N seeds (default 4000).
//! * `IBP_SIM_SEED=S` replays the single seed S with a full event trace.
//! * `IBP_TEST_SEED=B` fixes the base seed of the batch (printed on every run).

use ibp_core::sim::{SimConfig, SimRng, run};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

#[test]
fn invariants_hold_on_thousands_of_seeds() {
    if let Some(seed) = env_u64("IBP_SIM_SEED") {
        let mut cfg = SimConfig::random(seed);
        cfg.trace = true;
        println!("replaying seed {seed}: {cfg:?}");
        let r = run(seed, &cfg);
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        return;
    }
    let base = env_u64("IBP_TEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let count = env_u64("IBP_SIM_SEEDS").unwrap_or(4000);
    eprintln!(
        "simulation: base seed {base} (replay the batch with IBP_TEST_SEED={base}), {count} seeds"
    );
    let mut seeds = SimRng::new(base);
    let mut failures = Vec::new();
    let (mut decisions, mut delivered, mut dropped, mut refused) = (0, 0, 0, 0);
    for _ in 0..count {
        let seed = seeds.next_u64();
        let cfg = SimConfig::random(seed);
        let r = run(seed, &cfg);
        decisions += r.decisions;
        delivered += r.delivered;
        dropped += r.dropped;
        refused += r.refused;
        if !r.violations.is_empty() {
            failures.push((seed, cfg, r.violations));
        }
    }
    eprintln!(
        "simulation: {decisions} decisions, {delivered} deliveries, {dropped} drops, {refused} refused by caps"
    );
    if let Some((seed, cfg, v)) = failures.first() {
        panic!(
            "{} of {count} seeds violated invariants. First: seed {seed} ({cfg:?}):\n{}\nReplay: IBP_SIM_SEED={seed} cargo test -p ibp-core --test simulation -- --nocapture",
            failures.len(),
            v.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(
        decisions > count,
        "the simulation made almost no decisions; it is not exercising consensus"
    );
    assert!(
        dropped > 0 && refused > 0,
        "loss and caps were never exercised"
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    for seed in [1u64, 42, 7_777] {
        let cfg = SimConfig::random(seed);
        let a = run(seed, &cfg);
        let b = run(seed, &cfg);
        assert_eq!(
            (a.decisions, a.delivered, a.dropped, a.applies),
            (b.decisions, b.delivered, b.dropped, b.applies)
        );
    }
}
