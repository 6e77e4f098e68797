//! The status page and the SLA page in a real browser (headless Chromium over the DevTools
//! protocol), against a real cluster: three monitors, a DNS node and a collator on one
//! nats-server, with the IBP member and service lists from the fixtures.
//!
//! Screenshots of every page at desktop and phone width are written under
//! `target/tmp/screenshots/`; with `IBP_DOCS_SCREENSHOTS=1` the two the README shows
//! (`docs/status.png`, `docs/sla.png`) are written too.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{get, post, until};
use ibp_node::app::App;
use ibp_node::cluster::SystemClock;
use ibp_node::ibp_config::{IbpConfig, SharedIbpConfig};
use ibp_testkit::NatsServer;
use ibp_testkit::browser::Browser;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn lists() -> SharedIbpConfig {
    let read = |f: &str| std::fs::read_to_string(fixtures().join("ibp-config").join(f)).expect(f);
    SharedIbpConfig::fixed(
        IbpConfig::parse(
            &read("members_professional.json"),
            &read("services_rpc.json"),
        )
        .expect("lists"),
    )
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

async fn start(role: &str, id: &str, url: &str, dir: &std::path::Path) -> App {
    let cfg = common::node_config(role, id, url, dir);
    App::start_with(cfg, Arc::new(SystemClock::new()), Some(lists()))
        .await
        .expect("node starts")
}

/// Loads `url`, waits until the script has drawn the page, and asserts nothing failed.
async fn open(b: &mut Browser, url: &str, drawn: &str) {
    b.goto(url).await.expect("page loads");
    if let Err(e) = b.wait_for(drawn, Duration::from_secs(10)).await {
        let state = b
            .eval("JSON.stringify({rendered: document.body.dataset.rendered, live: (document.getElementById('live')||{}).textContent, title: document.title})")
            .await;
        panic!(
            "{url}: {e}; page {state:?}; problems {:#?}",
            b.take_problems()
        );
    }
    let problems = b.take_problems();
    assert!(problems.is_empty(), "{url}: {problems:#?}");
}

async fn both_widths(b: &mut Browser, url: &str, drawn: &str, name: &str) {
    for (w, h, mobile, suffix) in [(1280, 900, false, "desktop"), (390, 844, true, "phone")] {
        b.viewport(w, h, mobile).await.expect("viewport");
        open(b, url, drawn).await;
        let path = shots().join(format!("{name}-{suffix}.png"));
        b.screenshot(&path, 1600.0).await.expect("screenshot");
        println!("screenshot {}", path.display());
        if suffix == "desktop"
            && (name == "status" || name == "sla")
            && std::env::var_os("IBP_DOCS_SCREENSHOTS").is_some()
        {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs");
            std::fs::copy(&path, docs.join(format!("{name}.png"))).expect("copy to docs");
        }
    }
    b.viewport(1280, 900, false).await.expect("viewport");
}

fn outage(member: &str, status: bool) -> Value {
    json!({"checkType":"site","checkName":"ping","memberName":member,"isIPv6":false,
           "status":status,"errorText": if status {""} else {"100% packet loss"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_and_sla_pages_show_what_the_cluster_decided_live_in_a_real_browser() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let url = server.url();
    let mut monitors = Vec::new();
    for i in 1..=3 {
        monitors.push(start("monitor", &format!("monitor-{i}"), &url, dir.path()).await);
    }
    let dns = start("dns", "dns-1", &url, dir.path()).await;
    let collator = start("collator", "collator-1", &url, dir.path()).await;
    let http: Vec<String> = monitors.iter().map(|m| m.http_addr.to_string()).collect();
    let (dns_http, col_http) = (dns.http_addr.to_string(), collator.http_addr.to_string());
    for h in &http {
        until("3 active monitors", async || {
            get(h, "/v1/cluster").await.1["activeMonitors"] == 3
        })
        .await;
    }
    // Usage on the DNS node, counted and written.
    let hits = json!([
        {"domain":"rpc.ibp.network","member":"Amforc","countryCode":"DE","countryName":"Germany","hits":1200},
        {"domain":"rpc.ibp.network","member":"Stake Plus","countryCode":"US","countryName":"United States","hits":700},
        {"domain":"kusama.dotters.network","member":"Amforc","countryCode":"JP","countryName":"Japan","hits":300}
    ]);
    let (s, body) = post(&dns_http, "/v1/usage/hits", &hits.to_string()).await;
    assert_eq!(s, 202, "{body}");
    let (s, body) = post(&dns_http, "/process", "").await;
    assert_eq!(s, 200, "{body}");

    let mut b = Browser::start().await.expect("Chromium starts");
    b.viewport(1280, 900, false).await.expect("viewport");
    let page = format!("http://{}/", http[0]);
    open(
        &mut b,
        &page,
        "document.body.dataset.rendered && document.getElementById('live').textContent === 'live'",
    )
    .await;
    // One member seen online by monitor-1 only: a local result beside no official one.
    let (s, body) = post(
        &http[0],
        "/v1/observations",
        &outage("Stake Plus", true).to_string(),
    )
    .await;
    assert_eq!(s, 202, "{body}");

    // An outage decided by two of three monitors appears without a reload.
    b.eval(
        "window.__noReload = 1; window.__seen = null;
         new MutationObserver(() => {
           if (!window.__seen && document.querySelector('#board tr.offline[data-member=\"Amforc\"]'))
             window.__seen = Date.now();
         }).observe(document.getElementById('board'), {childList: true, subtree: true}); true",
    )
    .await
    .expect("observer");
    let posted = now_ms();
    for h in &http[..2] {
        let (s, body) = post(h, "/v1/observations", &outage("Amforc", false).to_string()).await;
        assert_eq!(s, 202, "{body}");
    }
    let seen = b
        .wait_for("window.__seen", Duration::from_secs(10))
        .await
        .expect("the board shows the outage without a reload");
    let delay = seen.as_f64().unwrap_or(0.0) - posted;
    println!("status board showed the outage {delay:.0} ms after it was posted (target < 1000 ms)");
    assert_eq!(
        b.eval("window.__noReload").await.expect("eval"),
        json!(1),
        "no reload"
    );
    assert_eq!(
        b.eval("document.getElementById('offline-count').textContent")
            .await
            .expect("eval"),
        json!("1")
    );

    // The decision is in the live feed; a click opens it with the votes per monitor.
    b.wait_for(
        "document.querySelector('#decisions li')",
        Duration::from_secs(5),
    )
    .await
    .expect("feed");
    let votes = b
        .eval(
            "document.querySelector('#decisions li').click();
             [document.getElementById('detail').open,
              document.querySelectorAll('#detail-votes tbody tr').length,
              document.getElementById('detail-json').textContent.includes('Amforc')]",
        )
        .await
        .expect("detail");
    assert_eq!(votes[0], true, "{votes}");
    // The votes this node had seen when the decision reached it (its own at least).
    assert!(votes[1].as_u64().unwrap_or(0) >= 1, "votes shown: {votes}");
    assert_eq!(votes[2], true, "{votes}");
    b.eval("document.getElementById('detail').close(); true")
        .await
        .expect("close");

    // Filters narrow the board.
    let all = b
        .eval("document.querySelectorAll('#board tbody tr').length")
        .await
        .expect("rows");
    assert!(all.as_u64().unwrap_or(0) >= 2, "{all}");
    let members = b
        .eval(
            "{ const i = document.getElementById('f-member'); i.value = 'stake';
               i.dispatchEvent(new Event('input'));
               [...document.querySelectorAll('#board tbody tr')].map(r => r.dataset.member) }",
        )
        .await
        .expect("filter");
    assert_eq!(members, json!(["Stake Plus"]));
    let offline = b
        .eval(
            "{ const i = document.getElementById('f-member'); i.value = '';
               i.dispatchEvent(new Event('input'));
               const s = document.getElementById('f-status'); s.value = 'offline';
               s.dispatchEvent(new Event('change'));
               [...document.querySelectorAll('#board tbody tr')].map(r => r.dataset.member) }",
        )
        .await
        .expect("filter");
    assert_eq!(offline, json!(["Amforc"]));
    let problems = b.take_problems();
    assert!(problems.is_empty(), "{problems:#?}");
    both_widths(
        &mut b,
        &page,
        "document.querySelector('#board tr.offline')",
        "status",
    )
    .await;

    // The collator: the open outage with its votes; usage on the DNS node.
    until("the collator recorded the outage", async || {
        get(&col_http, "/v1/events").await.1["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    both_widths(
        &mut b,
        &format!("http://{col_http}/"),
        "document.querySelector('#outages tbody tr.offline')",
        "collator",
    )
    .await;
    both_widths(
        &mut b,
        &format!("http://{dns_http}/"),
        "document.querySelectorAll('#usage-chart rect').length === 30 && document.querySelector('#top-members li')",
        "dns",
    )
    .await;
    let top = b
        .eval("document.querySelector('#top-members li').textContent")
        .await
        .expect("top member");
    assert!(
        top.as_str().is_some_and(|t| t.starts_with("Amforc")),
        "{top}"
    );

    // The SLA page shows the figures of the JSON.
    let (s, sla) = get(&col_http, "/v1/sla").await;
    assert_eq!(s, 200, "{sla}");
    let month = sla["month"].as_str().expect("month").to_string();
    let dot = sla["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["member"] == "Amforc"))
        .and_then(|m| m["services"].as_array())
        .and_then(|s| s.iter().find(|s| s["service"] == "Polkadot"))
        .cloned()
        .expect("Amforc serves Polkadot");
    assert!(
        dot["outages"].as_array().is_some_and(|o| !o.is_empty()),
        "{dot}"
    );
    let sla_page = format!("http://{col_http}/sla?month={month}");
    open(&mut b, &sla_page, "document.body.dataset.rendered").await;
    let cells = b
        .eval(
            "{ const r = document.querySelector('tr[data-member=\"Amforc\"][data-service=\"Polkadot\"]');
               [r.querySelector('.downtime').textContent, r.querySelector('.availability').textContent] }",
        )
        .await
        .expect("row");
    let want_down = format!("{:.2}", dot["downtimeHours"].as_f64().unwrap_or(-1.0));
    let want_avail = format!("{:.3} %", dot["availability"].as_f64().unwrap_or(-1.0));
    assert_eq!(cells[0], json!(want_down), "{cells}");
    assert!(
        cells[1]
            .as_str()
            .is_some_and(|c| c.starts_with(&want_avail)),
        "{cells} vs {want_avail}"
    );
    let rows = b
        .eval("document.querySelectorAll('#sla tbody tr').length")
        .await
        .expect("rows");
    let services: usize = sla["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["services"].as_array().map_or(1, |s| s.len().max(1)))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(rows, json!(services), "one row per member and service");
    both_widths(&mut b, &sla_page, "document.body.dataset.rendered", "sla").await;

    drop(b);
    for a in monitors {
        a.shutdown().await;
    }
    dns.shutdown().await;
    collator.shutdown().await;
}
