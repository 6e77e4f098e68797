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

/// Rust monitors beside Go HEAD and Go v0.6.12 monitors, with and without the quorum floor,
/// under the same faults. `IBP_SIM_MIXED_SEED=S` replays one seed with a trace.
#[test]
fn mixed_clusters_with_go_rule_monitors_keep_the_rust_invariants() {
    if let Some(seed) = env_u64("IBP_SIM_MIXED_SEED") {
        let mut cfg = SimConfig::mixed(seed);
        cfg.trace = true;
        println!("replaying mixed seed {seed}: {cfg:?}");
        let r = run(seed, &cfg);
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        return;
    }
    let base = env_u64("IBP_TEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }) ^ 0x5EED_0F60;
    let count = env_u64("IBP_SIM_MIXED_SEEDS").unwrap_or(1500);
    eprintln!(
        "mixed simulation: base seed {base} (replay the batch with IBP_TEST_SEED), {count} seeds"
    );
    let mut seeds = SimRng::new(base);
    let mut failures = Vec::new();
    let (mut decisions, mut floors, mut v0612) = (0, 0, 0);
    for _ in 0..count {
        let seed = seeds.next_u64();
        let cfg = SimConfig::mixed(seed);
        floors += usize::from(cfg.quorum_floor);
        v0612 += usize::from(cfg.go_v0612 > 0);
        let r = run(seed, &cfg);
        decisions += r.decisions;
        if !r.violations.is_empty() {
            failures.push((seed, cfg, r.violations));
        }
    }
    eprintln!(
        "mixed simulation: {decisions} decisions; {floors} runs with the floor, {v0612} with v0.6.12 monitors"
    );
    if let Some((seed, cfg, v)) = failures.first() {
        panic!(
            "{} of {count} mixed seeds violated invariants. First: seed {seed} ({cfg:?}):\n{}\nReplay: IBP_SIM_MIXED_SEED={seed} cargo test -p ibp-core --test simulation -- --nocapture",
            failures.len(),
            v.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(
        floors > 0 && v0612 > 0,
        "both floor and v0.6.12 runs exercised"
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
