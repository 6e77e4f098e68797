//! Signature checks per second on one core: what verifying every consensus message costs.
//! `cargo bench -p ibp-trust --bench verify` prints one JSON line per case.

use std::time::{Duration, Instant};

use chrono::Utc;
use ibp_trust::{Identity, Pairwise, TrustEntry, TrustList, Verifier};

fn main() {
    let key = Identity::generate();
    let entries = [TrustEntry {
        public_key: key.public_key().into(),
        node_id: "monitor-1".into(),
        role: "IBPMonitor".into(),
    }];
    let trust = TrustList::build([("trust", &entries[..])]).expect("trust");
    // A vote is ~170 bytes, a finalize ~600: sign a realistic mix.
    let n = 20_000;
    let now = Utc::now();
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let pad = if i % 2 == 0 { 170 } else { 600 };
            format!(
                "{{\"ProposalID\":\"{i:08}\",\"x\":\"{}\"}}",
                "y".repeat(pad)
            )
            .into_bytes()
        })
        .collect();
    // Fresh nonces (an empty pool): what signing costs when it is not prepared ahead.
    let t = Instant::now();
    let sigs: Vec<_> = payloads
        .iter()
        .map(|p| key.sign("consensus.vote", p, now))
        .collect();
    let sign = t.elapsed();
    let mut v = Verifier::new(Duration::from_secs(120), 262_144);
    let t = Instant::now();
    let mut ok = 0;
    for (p, s) in payloads.iter().zip(&sigs) {
        let h = s.headers();
        if v.verify(&trust, "consensus.vote", p, h, now).is_ok() {
            ok += 1;
        }
    }
    let verify = t.elapsed();
    assert_eq!(ok, n);
    // Rejections that never reach the curve: unsigned, untrusted key, replay.
    let t = Instant::now();
    for (p, s) in payloads.iter().zip(&sigs) {
        let h = s.headers();
        let _ = v.verify(&trust, "consensus.vote", p, h, now);
    }
    let replay = t.elapsed();

    // The hot path of a monitor in enforce mode: five monitors trusting each other; one
    // signs from its nonce pool with authenticators for the four others, one of them
    // accepts by its authenticator.
    let monitors: Vec<Identity> = (0..5).map(|_| Identity::generate()).collect();
    let entries: Vec<TrustEntry> = monitors
        .iter()
        .enumerate()
        .map(|(i, k)| TrustEntry {
            public_key: k.public_key().into(),
            node_id: format!("monitor-{i}"),
            role: "IBPMonitor".into(),
        })
        .collect();
    let five = TrustList::build([("trust", &entries[..])]).expect("trust");
    let sender = &monitors[0];
    let pw_sender = Pairwise::new(sender, &five);
    let pw_receiver = std::sync::Arc::new(Pairwise::new(&monitors[1], &five));
    sender.precompute(n);
    let t = Instant::now();
    let fast: Vec<_> = payloads
        .iter()
        .map(|p| sender.sign_for("consensus.vote", p, now, Some(&pw_sender)))
        .collect();
    let sign_pooled = t.elapsed();
    let mut v = Verifier::new(Duration::from_secs(120), 262_144);
    v.set_pairwise(Some(pw_receiver));
    let t = Instant::now();
    for (p, s) in payloads.iter().zip(&fast) {
        let h = s.headers();
        assert!(v.verify(&five, "consensus.vote", p, h, now).is_ok());
    }
    let verify_mac = t.elapsed();
    assert_eq!(v.accepted_by_mac(), n as u64);
    let t = Instant::now();
    sender.precompute(n);
    let nonces = t.elapsed();

    for (case, d) in [
        ("sign", sign),
        ("verify", verify),
        ("reject_replay", replay),
        ("sign_pooled_with_4_authenticators", sign_pooled),
        ("verify_by_authenticator", verify_mac),
        ("precompute_nonce", nonces),
    ] {
        println!(
            "{{\"bench\":\"trust_{case}\",\"messages\":{n},\"per_s_one_core\":{:.0},\"us_each\":{:.2}}}",
            n as f64 / d.as_secs_f64(),
            d.as_secs_f64() * 1e6 / n as f64
        );
    }
}
