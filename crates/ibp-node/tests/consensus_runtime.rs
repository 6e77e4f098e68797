//! The consensus runtime with 5 monitors in one process on a real nats-server.

use std::collections::BTreeMap;
use std::time::Duration;

use ibp_core::{CheckKey, CoreConfig, Decision, Observation};
use ibp_node::cluster::{Node, NodeOptions, RoleServices};
use ibp_testkit::NatsServer;
use ibp_wire::{CheckType, NodeId, Role};
use tokio::sync::broadcast;

fn key(member: &str) -> CheckKey {
    CheckKey::new(CheckType::Site, "ping", member, "", "", false)
}

fn options(id: &str, url: &str) -> NodeOptions {
    let mut o = NodeOptions::new(NodeId::new(id).expect("valid id"), url);
    o.connect.reconnect_delay = Duration::from_millis(200);
    o.reconcile_interval = Duration::from_secs(3600);
    o
}

async fn monitors(url: &str, n: usize, tweak: impl Fn(&mut NodeOptions)) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut o = options(&format!("monitor-{i}"), url);
        tweak(&mut o);
        let node = Node::connect(o).await.expect("connects");
        node.enable(Role::Monitor, RoleServices::default())
            .await
            .expect("enables");
        nodes.push(node);
    }
    for node in &nodes {
        assert!(
            node.wait_for_active(Role::Monitor, n, Duration::from_secs(20))
                .await,
            "{} sees {n} monitors",
            node.id()
        );
    }
    nodes
}

async fn set_all(nodes: &[Node], member: &str, status: bool) {
    for n in nodes {
        n.set_local(Observation::new(key(member), status))
            .await
            .expect("monitor");
    }
}

/// Waits for the decision on `member` on a node's stream.
async fn decision_for(rx: &mut broadcast::Receiver<Decision>, member: &str) -> Decision {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await {
                Ok(d) if d.proposal.member_name == member => return d,
                Ok(_) => continue,
                Err(e) => panic!("decision stream: {e}"),
            }
        }
    })
    .await
    .expect("a decision arrives")
}

fn official(node: &Node, member: &str) -> Option<bool> {
    node.official()
        .into_iter()
        .find(|(k, _)| *k == key(member))
        .map(|(_, o)| o.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_all_agree_with_finalizes_and_applies_on_all_five() {
    let server = NatsServer::start().expect("server");
    let nodes = monitors(&server.url(), 5, |_| {}).await;
    let mut rxs: Vec<_> = nodes.iter().map(Node::decisions).collect();
    set_all(&nodes, "alpha", false).await;
    nodes[0]
        .propose_check_status(
            CheckType::Site,
            "ping",
            "alpha",
            "",
            "",
            false,
            "down",
            ibp_wire::Data::none(),
            false,
        )
        .await
        .expect("proposes");
    for (i, rx) in rxs.iter_mut().enumerate() {
        let d = decision_for(rx, "alpha").await;
        assert!(d.passed, "node {i}");
    }
    for n in &nodes {
        assert_eq!(official(n, "alpha"), Some(false), "{}", n.id());
        assert!(n.proposals().is_empty(), "{} forgot the proposal", n.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dissent_fails_everywhere() {
    let server = NatsServer::start().expect("server");
    let nodes = monitors(&server.url(), 5, |_| {}).await;
    let mut rxs: Vec<_> = nodes.iter().map(Node::decisions).collect();
    set_all(&nodes, "beta", true).await;
    nodes[0]
        .set_local(Observation::new(key("beta"), false))
        .await
        .expect("monitor");
    nodes[0]
        .propose_check_status(
            CheckType::Site,
            "ping",
            "beta",
            "",
            "",
            false,
            "",
            ibp_wire::Data::none(),
            false,
        )
        .await
        .expect("proposes");
    for rx in &mut rxs {
        assert!(!decision_for(rx, "beta").await.passed);
    }
    for n in &nodes {
        assert_eq!(official(n, "beta"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_monitor_stopped_the_other_four_still_decide() {
    let server = NatsServer::start().expect("server");
    let mut nodes = monitors(&server.url(), 5, |_| {}).await;
    let stopped = nodes.pop().expect("five");
    stopped.shutdown(Duration::from_secs(2)).await;
    // The clean leave takes it out of the count at once.
    for n in &nodes {
        assert!(
            n.wait_until(|n| n.count_active_monitors() == 4, Duration::from_secs(10))
                .await,
            "{} still counts the stopped monitor",
            n.id()
        );
    }
    let mut rxs: Vec<_> = nodes.iter().map(Node::decisions).collect();
    set_all(&nodes, "gamma", false).await;
    nodes[1]
        .observe(Observation::new(key("gamma"), false))
        .await
        .expect("observes");
    for rx in &mut rxs {
        assert!(decision_for(rx, "gamma").await.passed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_published_before_its_proposal_still_counts() {
    let server = NatsServer::start().expect("server");
    let nodes = monitors(&server.url(), 3, |_| {}).await;
    let mut rx = nodes[0].decisions();
    // A Go-shaped outsider sends its vote first, then the proposal it votes on.
    let raw = async_nats::connect(server.url()).await.expect("raw client");
    let pid = "11111111-2222-4333-8444-555555555555";
    let vote = format!(
        r#"{{"ProposalID":"{pid}","SenderNodeID":"monitor-1","NodeID":"monitor-1","Agree":true,"Timestamp":"2026-11-27T10:50:59.1Z"}}"#
    );
    let prop = format!(
        r#"{{"ID":"{pid}","SenderNodeID":"monitor-2","CheckType":"site","CheckName":"ping","MemberName":"delta","DomainName":"","Endpoint":"","ProposedStatus":false,"ErrorText":"","Data":null,"IsIPv6":false,"Timestamp":"2026-11-27T10:50:59Z"}}"#
    );
    // monitor-0 agrees; monitor-1's early vote plus monitor-0's own make 2 of 3.
    nodes[0]
        .set_local(Observation::new(key("delta"), false))
        .await
        .expect("monitor");
    raw.publish("consensus.vote", vote.into())
        .await
        .expect("publish");
    raw.flush().await.expect("flush");
    // Make sure the vote is buffered before the proposal goes out.
    assert!(
        nodes[0]
            .wait_until(
                |n| n.counters().buffered_votes == 1,
                Duration::from_secs(10)
            )
            .await,
        "the vote was buffered"
    );
    raw.publish("consensus.propose", prop.into())
        .await
        .expect("publish");
    raw.flush().await.expect("flush");
    let d = decision_for(&mut rx, "delta").await;
    assert!(d.passed);
    assert_eq!(
        d.votes.as_ref().and_then(|v| v.get("monitor-1")),
        Some(&true),
        "the early vote was counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_twice_is_an_error_and_roles_subscribe_exactly_their_subjects() {
    let server = NatsServer::start().expect("server");
    let mut seen = BTreeMap::new();
    for role in Role::ALL {
        let node = Node::connect(options(
            &format!("probe-{}", role.short_name()),
            &server.url(),
        ))
        .await
        .expect("connects");
        node.enable(role, RoleServices::default())
            .await
            .expect("enables");
        assert!(
            node.enable(role, RoleServices::default()).await.is_err(),
            "second enable refused"
        );
        assert!(
            node.enable(Role::Dns, RoleServices::default())
                .await
                .is_err()
        );
        // A server round trip, so its monitoring endpoint shows every subscription.
        node.connection().barrier().await.expect("barrier");
        let connz = server.monitor("/connz?subs=1").expect("connz");
        let name = format!("ibp-node probe-{}", role.short_name());
        let conn = connz["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .find(|c| c["name"] == name.as_str())
            .cloned()
            .expect("our connection");
        let mut subs: Vec<String> = conn["subscriptions_list"]
            .as_array()
            .expect("subs")
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .filter(|s| !s.starts_with("_INBOX"))
            .collect();
        subs.sort();
        seen.insert(role, subs);
        node.shutdown(Duration::from_secs(1)).await;
    }
    let want = |role: Role| {
        let mut v: Vec<String> = ibp_wire::subjects::subscriptions(role)
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(ibp_wire::ext::LEAVE_SUBJECT.to_string());
        if role == Role::Dns {
            // Beyond the Go DNS node: it answers from decisions as they are made.
            v.extend([
                ibp_wire::subjects::VOTE.to_string(),
                ibp_wire::subjects::FINALIZE.to_string(),
            ]);
        }
        if role == Role::Monitor {
            // Beyond the Go monitor: monitors catch up from each other.
            v.push(ibp_node::cluster::SYNC_SUBJECT.to_string());
        }
        v.sort();
        v
    };
    for role in Role::ALL {
        assert_eq!(seen[&role], want(role), "{role}");
    }
}

/// A Rust monitor on a fresh server, and a plain client to play the Go monitors.
async fn rust_monitor_and_go_peers() -> (Node, NatsServer, async_nats::Client) {
    let server = NatsServer::start().expect("server");
    let node = Node::connect(options("rust-monitor", &server.url()))
        .await
        .expect("connects");
    node.enable(Role::Monitor, RoleServices::default())
        .await
        .expect("enables");
    let raw = async_nats::connect(server.url()).await.expect("raw client");
    (node, server, raw)
}

/// A Rust monitor that knows the three captured Go monitors and has learned their decision
/// on `m1` from their finalizes alone (nothing to count).
async fn a_go_finalize_applied() -> (Node, NatsServer, async_nats::Client, Decision) {
    let (node, server, raw) = rust_monitor_and_go_peers().await;
    let mut rx = node.decisions();
    know_the_go_monitors(&node, &raw).await;
    replay_go_run(&raw, |s| s == "consensus.finalize").await;
    let d = decision_for(&mut rx, "m1").await;
    (node, server, raw, d)
}

/// Replays the Go monitors' joins and waits until the node counts them with itself.
async fn know_the_go_monitors(node: &Node, raw: &async_nats::Client) {
    replay_go_run(raw, |s| s == "consensus.cluster").await;
    assert!(
        node.wait_until(|n| n.count_active_monitors() == 4, Duration::from_secs(10))
            .await,
        "three Go monitors and itself"
    );
}

/// Publishes the captured Go run, only the subjects `keep` accepts.
async fn replay_go_run(raw: &async_nats::Client, keep: impl Fn(&str) -> bool) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/vectors/go-v0.7-agree");
    let text = std::fs::read_to_string(dir.join("all_messages.jsonl")).expect("vectors");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let subject = v["subject"].as_str().expect("subject").to_string();
        if !keep(&subject) {
            continue;
        }
        let payload = v["raw"].as_str().expect("raw").to_string();
        raw.publish(subject, payload.into()).await.expect("publish");
    }
    raw.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_monitor_decides_from_the_captured_go_votes() {
    use futures::StreamExt;
    let (node, _server, raw) = rust_monitor_and_go_peers().await;
    let mut finals = raw.subscribe("consensus.finalize").await.expect("sub");
    raw.flush().await.expect("flush");
    let mut rx = node.decisions();
    // Joins and votes arrive on separate subscriptions, so their order is not kept: know
    // the three Go monitors first, or a vote could be counted against a smaller majority.
    know_the_go_monitors(&node, &raw).await;
    // Without the Go finalizes, only counting the Go votes can decide it.
    replay_go_run(&raw, |s| {
        s != "consensus.finalize" && s != "consensus.cluster"
    })
    .await;
    let d = decision_for(&mut rx, "m1").await;
    assert!(d.passed);
    assert!(d.by_self, "decided by counting the three Go votes");
    assert_eq!(d.tally, Some((3, 0)));
    assert_eq!(official(&node, "m1"), Some(false));
    let f = tokio::time::timeout(Duration::from_secs(10), finals.next())
        .await
        .expect("a finalize")
        .expect("message");
    let f: ibp_wire::FinalizeMessage = ibp_wire::decode(&f.payload).expect("Go-shaped finalize");
    assert_eq!(f.sender_node_id, "rust-monitor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_serves_catch_up_pages_to_whom_they_are_asked_and_whole_answers_to_old_askers() {
    use futures::StreamExt;
    let (_node, _server, raw, d) = a_go_finalize_applied().await;
    assert!(d.passed);
    let inbox = raw.new_inbox();
    let mut answers = raw.subscribe(inbox.clone()).await.expect("sub");
    let ask = |v: serde_json::Value| {
        let raw = raw.clone();
        let inbox = inbox.clone();
        async move {
            raw.publish_with_reply(ibp_node::cluster::SYNC_SUBJECT, inbox, v.to_string().into())
                .await
                .expect("ask");
        }
    };
    let next = async |answers: &mut async_nats::Subscriber| -> serde_json::Value {
        let m = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("an answer")
            .expect("message");
        serde_json::from_slice(&m.payload).expect("json")
    };
    // Asked of another monitor, then of this one: answers come in order, so the first one
    // to arrive shows whether it answered the ask meant for another.
    ask(serde_json::json!({"node": "asker", "to": "monitor-go-1", "page": {"seq": 7}})).await;
    ask(serde_json::json!({"node": "asker", "to": "rust-monitor", "page": {"seq": 8}})).await;
    let page = next(&mut answers).await;
    assert_eq!(
        page["seq"], 8,
        "the ask meant for another went unanswered: {page}"
    );
    assert_eq!(page["node"], "rust-monitor");
    assert_eq!(page["last"], true, "{page}");
    assert_eq!(page["results"].as_array().map(Vec::len), Some(1), "{page}");
    let after = page["next"].clone();
    assert_eq!(
        after["memberName"], "m1",
        "the page names where it ended: {page}"
    );
    // The page after the last check: empty, and the last.
    ask(serde_json::json!({"node": "asker", "page": {"seq": 9, "after": after}})).await;
    let page = next(&mut answers).await;
    assert_eq!(
        (page["seq"].clone(), page["last"].clone()),
        (9.into(), true.into())
    );
    assert_eq!(page["results"].as_array().map(Vec::len), Some(0), "{page}");
    // An earlier version's ask, without pages: the whole answer, unnumbered.
    ask(serde_json::json!({"node": "asker"})).await;
    let whole = next(&mut answers).await;
    assert!(whole.get("seq").is_none(), "{whole}");
    assert_eq!(whole["last"], true);
    assert_eq!(
        whole["results"][0]["Proposal"]["MemberName"], "m1",
        "{whole}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_monitor_applies_a_captured_go_finalize() {
    let (node, _server, _raw, d) = a_go_finalize_applied().await;
    assert!(d.passed && !d.by_self, "learned from a Go finalize");
    assert_eq!(d.finalizer, "monitor-go-1");
    assert_eq!(official(&node, "m1"), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_server_dies_mid_burst_every_monitor_ends_with_the_same_official_results() {
    const N: usize = 500;
    let mut server = NatsServer::start().expect("server");
    let fast = |o: &mut NodeOptions| {
        o.reconcile_interval = Duration::from_millis(500);
        o.core = CoreConfig {
            republish_after: Duration::from_millis(500),
            proposal_timeout: Duration::from_secs(2),
            ..CoreConfig::default()
        };
    };
    let nodes = monitors(&server.url(), 5, fast).await;
    let members: Vec<String> = (0..N).map(|i| format!("member-{i:03}")).collect();
    for m in &members {
        set_all(&nodes, m, false).await;
    }
    let proposer = nodes[0].clone();
    let ms = members.clone();
    let burst = tokio::spawn(async move {
        for m in &ms {
            proposer
                .observe(Observation::new(key(m), false))
                .await
                .expect("observes");
        }
    });
    // Kill the server once part of the burst has been decided.
    let mut rx = nodes[4].decisions();
    for _ in 0..50 {
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
    }
    server.kill();
    burst.await.expect("burst task");
    server.restart().expect("restarts");
    for n in &nodes {
        let ok = n
            .wait_until(
                |n| n.official().len() == N && n.official().iter().all(|(_, o)| !o.status),
                Duration::from_secs(120),
            )
            .await;
        let counts: Vec<usize> = nodes.iter().map(|n| n.official().len()).collect();
        assert!(
            ok,
            "official results per monitor: {counts:?} (want {N} each)"
        );
    }
    let first: Vec<CheckKey> = nodes[0].official().into_iter().map(|(k, _)| k).collect();
    for n in &nodes[1..] {
        let keys: Vec<CheckKey> = n.official().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_enable_can_be_retried() {
    let server = NatsServer::start().expect("server");
    let node = Node::connect(options("retry-1", &server.url()))
        .await
        .expect("connects");
    node.connection().close().await;
    let mut state = node.connection().watch_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.state == ibp_node::connection::StateKind::Closed),
    )
    .await
    .expect("the connection closes")
    .expect("watch open");
    let first = node
        .enable(Role::Monitor, RoleServices::default())
        .await
        .expect_err("no connection");
    assert!(
        !matches!(first, ibp_node::cluster::EnableError::AlreadyEnabled(_)),
        "{first}"
    );
    assert_eq!(node.role(), None, "the failed enable was undone");
    let again = node
        .enable(Role::Monitor, RoleServices::default())
        .await
        .expect_err("still no connection");
    assert!(
        !matches!(again, ibp_node::cluster::EnableError::AlreadyEnabled(_)),
        "a retry is a real attempt: {again}"
    );
}
