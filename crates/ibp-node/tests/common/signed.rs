//! Helpers for tests of signed consensus: a cluster of real nodes with keys and a trust
//! list, and a stranger's client to forge, replay and flood with.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use ibp_core::{CheckKey, Observation};
use ibp_node::app::App;
use ibp_node::config::{SecurityConfig, SecuritySection};
use ibp_testkit::NatsServer;
use ibp_trust::{HDR_KEY, HDR_SIG, HDR_SIG_TIME, Identity, Signature, TrustEntry};
use ibp_wire::{
    CheckType, ClusterMessage, FinalizeMessage, NodeInfo, Proposal, Role, Vote, WireTime, subjects,
};

pub const WAIT: Duration = Duration::from_secs(20);

pub fn key(member: &str) -> CheckKey {
    CheckKey::new(CheckType::Site, "ping", member, "", "", false)
}

/// A cluster of real nodes, each with its own key, all trusting each other.
pub struct Cluster {
    pub nats: NatsServer,
    pub apps: Vec<App>,
    pub cfgs: BTreeMap<String, ibp_node::config::NodeConfig>,
    pub keys: BTreeMap<String, Identity>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn app(&self, id: &str) -> &App {
        self.apps
            .iter()
            .find(|a| a.node.id().as_str() == id)
            .expect("node")
    }

    pub fn key(&self, id: &str) -> &Identity {
        self.keys.get(id).expect("key")
    }

    pub async fn stop(self) {
        for a in self.apps {
            a.shutdown().await;
        }
        drop(self.nats);
    }
}

pub fn write_seed(dir: &Path, id: &str, key: &Identity) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("{id}.nk"));
    std::fs::write(&p, key.seed().expect("seed")).expect("seed file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// `layout`: (node ID, role, mode).
pub async fn cluster(layout: &[(&str, &str, &str)]) -> Cluster {
    cluster_with(NatsServer::start().expect("nats-server"), layout, |_| {}).await
}

pub async fn cluster_with(
    nats: NatsServer,
    layout: &[(&str, &str, &str)],
    tweak: impl Fn(&mut ibp_node::config::NodeConfig),
) -> Cluster {
    let dir = tempfile::tempdir().expect("dir");
    let keys: BTreeMap<String, Identity> = layout
        .iter()
        .map(|(id, _, _)| (id.to_string(), Identity::generate()))
        .collect();
    let trust: Vec<TrustEntry> = layout
        .iter()
        .map(|(id, role, _)| TrustEntry {
            public_key: keys[*id].public_key().to_string(),
            node_id: id.to_string(),
            role: role.to_string(),
        })
        .collect();
    let mut apps = Vec::new();
    let mut cfgs = BTreeMap::new();
    for (id, role, mode) in layout {
        let mut cfg = super::node_config(role, id, &nats.url(), dir.path());
        cfg.security = SecurityConfig::resolve(
            Some(&SecuritySection {
                mode: Some(mode.to_string()),
                seed_file: Some(write_seed(dir.path(), id, &keys[*id])),
                trust: Some(trust.clone()),
                ..SecuritySection::default()
            }),
            None,
        )
        .expect("security config");
        assert!(
            cfg.security.warnings.is_empty(),
            "{:?}",
            cfg.security.warnings
        );
        cfg.core.finalize_grace = Duration::from_millis(500);
        tweak(&mut cfg);
        cfgs.insert(id.to_string(), cfg.clone());
        apps.push(App::start(cfg).await.expect("starts"));
    }
    let monitors = layout.iter().filter(|(_, r, _)| *r == "monitor").count();
    for a in &apps {
        assert!(
            a.node.wait_for_active(Role::Monitor, monitors, WAIT).await,
            "{} sees the {monitors} monitors",
            a.node.id()
        );
    }
    Cluster {
        nats,
        apps,
        cfgs,
        keys,
        _dir: dir,
    }
}

pub async fn observe(app: &App, member: &str, status: bool) {
    app.monitor
        .as_ref()
        .expect("monitor")
        .observe(&app.node, vec![Observation::new(key(member), status)])
        .await
        .expect("observe");
}

/// `member` changes to `status` as monitor-2 and then monitor-1 see it: monitor-2's
/// result is recorded first, so it agrees when monitor-1 proposes (two observations racing
/// a proposal would leave one monitor voting on stale data until reconcile).
pub async fn two_see(c: &Cluster, member: &str, status: bool) {
    c.app("monitor-2")
        .node
        .set_local(Observation::new(key(member), status))
        .await
        .expect("local");
    observe(c.app("monitor-1"), member, status).await;
}

pub async fn official_everywhere(c: &Cluster, member: &str, status: bool) {
    official_everywhere_within(c, member, status, WAIT).await
}

pub async fn official_everywhere_within(c: &Cluster, member: &str, status: bool, within: Duration) {
    let k = key(member);
    for a in c.apps.iter().filter(|a| a.monitor.is_some()) {
        let ok = a
            .node
            .wait_until(
                |n| {
                    n.official()
                        .iter()
                        .any(|(kk, o)| *kk == k && o.status == status)
                },
                within,
            )
            .await;
        assert!(ok, "{} holds {member} = {status}", a.node.id());
    }
}

pub fn official_of(app: &App, member: &str) -> Option<bool> {
    let k = key(member);
    app.node
        .official()
        .into_iter()
        .find(|(kk, _)| *kk == k)
        .map(|(_, o)| o.status)
}

/// Sum of a metric's samples whose line contains every `labels` fragment.
pub fn metric(app: &App, name: &str, labels: &[&str]) -> f64 {
    app.node.refresh_metrics();
    app.node
        .metrics()
        .encode()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every `trust_rejections` sample of a node: (labels) → count.
pub fn rejections(app: &App) -> BTreeMap<String, u64> {
    app.node
        .metrics()
        .encode()
        .lines()
        .filter(|l| l.starts_with("ibp_trust_rejections_total{"))
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels.to_string(), v.parse::<f64>().ok()? as u64))
        })
        .collect()
}

pub fn headers(s: &Signature) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(HDR_KEY, s.key.as_str());
    h.insert(HDR_SIG_TIME, s.time.as_str());
    h.insert(HDR_SIG, s.sig.as_str());
    h
}

pub fn proposal(id: &str, sender: &str, member: &str, status: bool) -> Proposal {
    Proposal {
        id: id.into(),
        sender_node_id: sender.into(),
        check_type: "site".into(),
        check_name: "ping".into(),
        member_name: member.into(),
        proposed_status: status,
        error_text: if status { "" } else { "forged" }.into(),
        timestamp: WireTime::from_utc(Utc::now()),
        ..Proposal::default()
    }
}

pub fn finalize(id: &str, sender: &str, member: &str, status: bool) -> Vec<u8> {
    ibp_wire::encode(&FinalizeMessage {
        proposal: proposal(id, sender, member, status),
        sender_node_id: sender.into(),
        passed: true,
        decided_at: WireTime::from_utc(Utc::now()),
    })
    .expect("encode")
}

pub fn join(id: &str, role: Role) -> Vec<u8> {
    ibp_wire::encode(&ClusterMessage {
        kind: "join".into(),
        sender: NodeInfo {
            node_id: id.into(),
            node_role: role.as_wire().into(),
            last_heard: WireTime::from_utc(Utc::now()),
            ..NodeInfo::default()
        },
        members: None,
    })
    .expect("encode")
}

pub fn vote(proposal_id: &str, sender: &str, node: &str) -> Vec<u8> {
    ibp_wire::encode(&Vote {
        proposal_id: proposal_id.into(),
        sender_node_id: sender.into(),
        node_id: node.into(),
        agree: true,
        timestamp: WireTime::from_utc(Utc::now()),
    })
    .expect("encode")
}

/// A stranger's client.
pub async fn stranger(c: &Cluster) -> async_nats::Client {
    async_nats::connect(c.nats.url()).await.expect("connects")
}

pub async fn send(
    client: &async_nats::Client,
    subject: &str,
    payload: Vec<u8>,
    sig: Option<Signature>,
) {
    match sig {
        Some(s) => client
            .publish_with_headers(subject.to_string(), headers(&s), Bytes::from(payload))
            .await
            .expect("publish"),
        None => client
            .publish(subject.to_string(), Bytes::from(payload))
            .await
            .expect("publish"),
    }
}

/// Records every signed consensus message until dropped.
pub async fn capture(c: &Cluster) -> (async_nats::Client, Vec<async_nats::Subscriber>) {
    let client = stranger(c).await;
    let mut subs = Vec::new();
    for s in [
        subjects::CLUSTER,
        subjects::PROPOSE,
        subjects::VOTE,
        subjects::FINALIZE,
    ] {
        subs.push(client.subscribe(s.to_string()).await.expect("subscribe"));
    }
    client.flush().await.expect("flush");
    (client, subs)
}

pub async fn drain(subs: Vec<async_nats::Subscriber>) -> Vec<async_nats::Message> {
    let mut out = Vec::new();
    for mut s in subs {
        s.unsubscribe().await.expect("unsubscribe");
        while let Some(m) = s.next().await {
            if m.headers.as_ref().is_some_and(|h| h.get(HDR_SIG).is_some()) {
                out.push(m);
            }
        }
    }
    out
}

/// Every monitor of `c` observes `member` up; returns the signed messages of that decision
/// as a stranger recorded them (to replay). The nodes may apply the decision before the
/// finalize reaches the stranger's connection, so recording ends only once a signed
/// finalize has arrived (or `WAIT` has passed, which the caller's asserts then show).
pub async fn recorded_baseline(c: &Cluster, member: &str) -> Vec<async_nats::Message> {
    let (spy, mut subs) = capture(c).await;
    for a in c.apps.iter().filter(|a| a.monitor.is_some()) {
        observe(a, member, true).await;
    }
    official_everywhere(c, member, true).await;
    // `capture` subscribes to the finalize subject last.
    let mut finalize = subs.pop().expect("the finalize subscription");
    let mut early = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        while let Some(m) = finalize.next().await {
            let signed = m.headers.as_ref().is_some_and(|h| h.get(HDR_SIG).is_some());
            early.push(m);
            if signed {
                break;
            }
        }
    })
    .await;
    let mut captured = drain(subs).await;
    captured.extend(
        early
            .into_iter()
            .filter(|m| m.headers.as_ref().is_some_and(|h| h.get(HDR_SIG).is_some())),
    );
    captured.extend(drain(vec![finalize]).await);
    drop(spy);
    assert!(!captured.is_empty(), "the spy saw signed messages");
    captured
}

/// Publishes exact copies of recorded messages.
pub async fn replay(client: &async_nats::Client, recorded: &[async_nats::Message]) {
    for m in recorded {
        client
            .publish_with_headers(
                m.subject.to_string(),
                m.headers.clone().unwrap_or_default(),
                m.payload.clone(),
            )
            .await
            .expect("replay");
    }
    client.flush().await.expect("flush");
}
