//! Config files (the Go ones as they are, plus IbpNode) and the IBP member/service lists.

use std::path::PathBuf;

use ibp_node::config::{FileConfig, NodeConfig, Overrides};
use ibp_node::ibp_config::{IbpConfig, SharedIbpConfig};
use ibp_wire::{CheckType, Role};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn local() -> Overrides {
    Overrides {
        http: Some("127.0.0.1:0".into()),
        db: Some("sqlite:///tmp/x.db".into()),
        ..Overrides::default()
    }
}

#[test]
fn the_go_configs_are_accepted_as_they_are() {
    let m = FileConfig::load(&fixtures().join("go-configs/monitor.json")).expect("monitor.json");
    let cfg = NodeConfig::resolve(
        &m,
        &Overrides {
            role: Some("monitor".into()),
            ..Overrides::default()
        },
    )
    .expect("resolves");
    assert_eq!(cfg.node_id.as_str(), "MONITOR-NODE-1");
    assert_eq!(
        cfg.nats.servers,
        "nats://nats1.example.net:4222,nats://nats2.example.net:4222"
    );
    assert_eq!(cfg.nats.user.as_deref(), Some("monitor"));
    assert_eq!(cfg.http.to_string(), "0.0.0.0:6101", "from MonitorApi");
    assert!(
        cfg.db.starts_with("mysql://monitor:"),
        "from the Mysql section"
    );
    assert_eq!(cfg.config_reload.as_secs(), 3600);
    assert_eq!(cfg.checks.len(), 4);
    assert!(
        m.check("wss", CheckType::Endpoint)
            .is_some_and(|c| c.enabled)
    );
    assert!(m.check("wss", CheckType::Site).is_none());

    let d = FileConfig::load(&fixtures().join("go-configs/dns.json")).expect("dns.json");
    let cfg = NodeConfig::resolve(
        &d,
        &Overrides {
            role: Some("dns".into()),
            ..Overrides::default()
        },
    )
    .expect("resolves");
    assert_eq!(
        (cfg.role, cfg.node_id.as_str(), cfg.http.port()),
        (Role::Dns, "DNS1", 6100)
    );

    let c = FileConfig::load(&fixtures().join("go-configs/collator.json")).expect("collator.json");
    let cfg = NodeConfig::resolve(
        &c,
        &Overrides {
            role: Some("collator".into()),
            ..Overrides::default()
        },
    )
    .expect("resolves");
    assert_eq!((cfg.role, cfg.http.port()), (Role::Collator, 9000));
    assert_eq!(cfg.config_urls.len(), 5);
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let m = FileConfig::load(&fixtures().join("go-configs/collator.json")).expect("collator.json");
    let cfg = NodeConfig::resolve(
        &m,
        &Overrides {
            role: Some("collator".into()),
            ..Overrides::default()
        },
    )
    .expect("resolves");
    for text in [
        format!("{m:?}"),
        format!("{cfg:?}"),
        format!("{:?}", cfg.nats),
    ] {
        assert!(
            !text.contains("natspasswd") && !text.contains("dbpasswd"),
            "{text}"
        );
    }
}

fn err(json: &str, o: &Overrides) -> String {
    match FileConfig::parse(json).and_then(|f| NodeConfig::resolve(&f, o)) {
        Ok(_) => panic!("{json} should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_configs_name_the_field_and_the_reason() {
    let o = local();
    let cases = [
        (r#"{"Nats":{"NodeID":"bad id"}}"#, "Nats.NodeID"),
        (r#"{"Nats":{"NodeID":"a.b"}}"#, "a dot"),
        (
            r#"{"Nats":{"NodeID":"n","Url":"nats://:bad:port"}}"#,
            "Nats.Url",
        ),
        (
            r#"{"Nats":{"NodeID":"n","User":"u"}}"#,
            "Nats.User/Nats.Pass",
        ),
        (
            r#"{"MonitorApi":{"ListenPort":"sixty"}}"#,
            "MonitorApi.ListenPort",
        ),
        (r#"{"Mysql":{"Host":"db","Port":"x"}}"#, "Mysql.Port"),
        (r#"{"Mysql":{"Host":"db"}}"#, "Mysql.DB"),
        (
            r#"{"System":{"ConfigReloadTime":"soon"}}"#,
            "System.ConfigReloadTime",
        ),
        (
            r#"{"Checks":[{"Name":"x","CheckType":"planet"}]}"#,
            "Checks[0].CheckType",
        ),
        (r#"{"IbpNode":{"role":"router"}}"#, "IbpNode.role"),
        (r#"{"IbpNode":{"rolee":"dns"}}"#, "rolee"),
        (
            r#"{"IbpNode":{"consensus":{"proposal_timeout":"ages"}}}"#,
            "IbpNode",
        ),
        (
            r#"{"IbpNode":{"consensus":{"min_quorum":0}}}"#,
            "IbpNode.consensus.min_quorum",
        ),
        (
            r#"{"IbpNode":{"dns":{"flush_interval":"0s"}}}"#,
            "IbpNode.dns.flush_interval",
        ),
        (r#"{"IbpNode":{"log_format":"xml"}}"#, "IbpNode.log_format"),
        ("[1,2]", "(file)"),
        ("{not json", "not valid JSON"),
    ];
    for (json, want) in cases {
        let e = err(json, &o);
        assert!(e.contains(want), "{json}: {e:?} should mention {want:?}");
    }
    let e = err(
        "{}",
        &Overrides {
            http: Some("nowhere".into()),
            ..local()
        },
    );
    assert!(e.contains("--http"), "{e}");
    let e = err(
        "{}",
        &Overrides {
            db: Some("postgres://x".into()),
            ..local()
        },
    );
    assert!(e.contains("--db"), "{e}");
}

#[test]
fn keys_match_case_insensitively_like_go() {
    let f = FileConfig::parse(r#"{"nats":{"nodeid":"m-1","URL":"nats://10.0.0.1:4222"},"system":{"workdir":"/var/lib/x"}}"#).expect("parses");
    let cfg = NodeConfig::resolve(&f, &local()).expect("resolves");
    assert_eq!(cfg.node_id.as_str(), "m-1");
    assert_eq!(cfg.nats.servers, "nats://10.0.0.1:4222");
    assert_eq!(cfg.work_dir, PathBuf::from("/var/lib/x"));
}

#[test]
fn flags_override_the_file() {
    let f = FileConfig::parse(r#"{"Nats":{"NodeID":"file-id","Url":"nats://file:4222"},"IbpNode":{"role":"dns","http":"127.0.0.1:7000"}}"#).expect("parses");
    let o = Overrides {
        role: Some("collator".into()),
        node_id: Some("flag-id".into()),
        nats_url: Some("nats://flag:4222".into()),
        http: Some("127.0.0.1:7001".into()),
        db: Some("sqlite:///tmp/f.db".into()),
        work_dir: None,
        dns_listen: Some("127.0.0.1:5353".into()),
    };
    let cfg = NodeConfig::resolve(&f, &o).expect("resolves");
    assert_eq!(
        cfg.geodns.listen,
        Some("127.0.0.1:5353".parse().expect("addr"))
    );
    assert_eq!(
        (
            cfg.role,
            cfg.node_id.as_str(),
            cfg.nats.servers.as_str(),
            cfg.http.port()
        ),
        (Role::Collator, "flag-id", "nats://flag:4222", 7001)
    );
    let cfg = NodeConfig::resolve(&FileConfig::default(), &Overrides::default())
        .expect("defaults work without a file");
    assert_eq!(cfg.role, Role::Monitor);
    assert!(cfg.db.starts_with("sqlite://"));
}

fn ibp() -> IbpConfig {
    let m = std::fs::read_to_string(fixtures().join("ibp-config/members_professional.json"))
        .expect("members");
    let s =
        std::fs::read_to_string(fixtures().join("ibp-config/services_rpc.json")).expect("services");
    IbpConfig::parse(&m, &s).expect("parses")
}

#[test]
fn member_and_service_lookups() {
    let c = ibp();
    assert_eq!(c.members.len(), 7);
    assert_eq!(c.services.len(), 22);
    assert_eq!(
        c.services.values().map(|s| s.rpc_urls.len()).sum::<usize>(),
        83
    );
    let m = c
        .member("stake plus")
        .expect("case-insensitive member lookup");
    assert_eq!(m.name, "Stake Plus");
    assert!(!c.member_endpoints("Stake Plus").is_empty());
    // rpc.ibp.network serves many services: every node must pick the same one.
    let all = c.services_for_domain("rpc.ibp.network");
    assert!(all.len() > 1);
    let pick = c.service_for_domain("RPC.IBP.NETWORK.").expect("found");
    for _ in 0..10 {
        assert_eq!(
            c.service_for_domain("rpc.ibp.network").map(|s| &s.name),
            Some(&pick.name)
        );
    }
    assert!(c.service_for_domain("unknown.example").is_none());
}

#[tokio::test]
async fn a_failed_reload_keeps_the_last_good_copy() {
    let dir = tempfile::tempdir().expect("dir");
    let m = dir.path().join("members.json");
    let s = dir.path().join("services.json");
    std::fs::copy(fixtures().join("ibp-config/members_professional.json"), &m).expect("copy");
    std::fs::copy(fixtures().join("ibp-config/services_rpc.json"), &s).expect("copy");
    let shared = SharedIbpConfig::default();
    let (ms, ss) = (m.display().to_string(), s.display().to_string());
    shared.reload(&ms, &ss).await.expect("first load");
    std::fs::write(&m, "{ broken").expect("corrupt");
    assert!(
        shared
            .reload(&ms, &ss)
            .await
            .unwrap_err()
            .contains("not valid JSON")
    );
    assert_eq!(
        shared.get().map(|c| c.members.len()),
        Some(7),
        "kept the last good copy"
    );
    assert!(
        shared
            .reload("https://127.0.0.1:1/members.json", &ss)
            .await
            .is_err(),
        "an unreachable URL is an error, not an exit"
    );
    assert_eq!(shared.get().map(|c| c.members.len()), Some(7));
}

#[test]
fn security_settings_are_checked_at_start_and_name_the_field() {
    let dir = tempfile::tempdir().expect("dir");
    let key = ibp_trust::Identity::generate();
    let seed = dir.path().join("node.nk");
    std::fs::write(&seed, key.seed().expect("seed")).expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let seed_s = seed.display().to_string();
    let pk = key.public_key().to_string();
    let o = Overrides {
        node_id: Some("monitor-1".into()),
        ..local()
    };
    let sec = |v: serde_json::Value| serde_json::json!({"IbpNode": {"security": v}}).to_string();
    let cases = [
        (
            sec(serde_json::json!({"mode": "paranoid"})),
            "IbpNode.security.mode",
        ),
        (
            sec(serde_json::json!({"mode": "enforce"})),
            "needs this node's key",
        ),
        (
            sec(serde_json::json!({"mode": "enforce", "seed_file": seed_s})),
            "IbpNode.security.trust",
        ),
        (
            sec(serde_json::json!({"seed_file": "/nonexistent/node.nk"})),
            "IbpNode.security.seed_file",
        ),
        (
            sec(
                serde_json::json!({"trust": [{"public_key": "UNOTAKEY", "node_id": "m", "role": "IBPMonitor"}]}),
            ),
            "IbpNode.security.trust[0].public_key",
        ),
        (
            sec(serde_json::json!({"trust": [{"public_key": pk, "node_id": "m", "role": "boss"}]})),
            "IbpNode.security.trust[0].role",
        ),
        (sec(serde_json::json!({"sead_file": "x"})), "sead_file"),
        (
            sec(serde_json::json!({"max_age": "0s"})),
            "IbpNode.security.max_age",
        ),
        (
            sec(serde_json::json!({"http_max_body": 0})),
            "IbpNode.security.http_max_body",
        ),
        (
            sec(serde_json::json!({"trust_file": "/nonexistent/trust.json"})),
            "IbpNode.security.trust_file",
        ),
        (
            serde_json::json!({"IbpNode": {"nats": {"nkey_seed": "SUnotaseed"}}}).to_string(),
            "IbpNode.nats.nkey_seed",
        ),
    ];
    for (json, want) in cases {
        let e = err(&json, &o);
        assert!(e.contains(want), "{json}: {e:?} should mention {want:?}");
    }

    // A good one: the key from the NATS NKey seed, trusted as this node.
    let trust =
        serde_json::json!([{"public_key": pk, "node_id": "monitor-1", "role": "IBPMonitor"}]);
    let json = serde_json::json!({"IbpNode": {"nats": {"nkey_seed": key.seed().expect("seed")},
        "security": {"mode": "enforce", "trust": trust}}})
    .to_string();
    let cfg = NodeConfig::resolve(&FileConfig::parse(&json).expect("parse"), &o).expect("resolves");
    assert_eq!(cfg.security.mode, ibp_trust::Mode::Enforce);
    assert_eq!(
        cfg.security.identity_source.as_deref(),
        Some("IbpNode.nats.nkey_seed")
    );
    assert!(
        cfg.security.warnings.is_empty(),
        "{:?}",
        cfg.security.warnings
    );
    assert!(
        !format!("{cfg:?}").contains(&key.seed().expect("seed")),
        "no seed in Debug"
    );

    // Warnings: a seed file others can read, and a key trusted as another node.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let json = sec(serde_json::json!({"mode": "verify", "seed_file": seed_s,
        "trust": [{"public_key": pk, "node_id": "monitor-2", "role": "IBPMonitor"}]}));
    let cfg = NodeConfig::resolve(&FileConfig::parse(&json).expect("parse"), &o).expect("resolves");
    let w = cfg.security.warnings.join("\n");
    assert!(w.contains("chmod 600"), "{w}");
    assert!(w.contains("trusted as monitor-2"), "{w}");
}

#[test]
fn the_go_dns_config_gives_the_geodns_settings() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/go-configs/dns.json"
    ))
    .expect("fixture");
    let f = FileConfig::parse(&text).expect("parses");
    let cfg = NodeConfig::resolve(&f, &Overrides::default()).expect("resolves");
    let g = &cfg.geodns;
    assert_eq!(g.monitors, ["http://127.0.0.1:6101/results"]);
    assert_eq!(g.refresh, std::time::Duration::from_secs(30));
    assert!(
        g.static_url
            .as_deref()
            .is_some_and(|u| u.ends_with("geodns-static.json"))
    );
    assert_eq!(
        g.overrides
            .as_ref()
            .and_then(|o| o["example.com"]["CN"]["memberName"].as_str()),
        Some("Stake Plus")
    );
    assert_eq!(g.listen, None);

    let bad = FileConfig::parse(r#"{"IbpNode":{"role":"dns","dns":{"listen":"nope"}}}"#)
        .and_then(|f| NodeConfig::resolve(&f, &Overrides::default()));
    let e = bad
        .expect_err("a bad listen address is refused")
        .to_string();
    assert!(e.contains("IbpNode.dns.listen"), "{e}");
}

#[test]
fn a_go_config_names_its_program_and_the_role_follows() {
    let read = |name: &str| {
        let path = format!(
            "{}/../../fixtures/go-configs/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        FileConfig::parse(&std::fs::read_to_string(path).expect("fixture")).expect("parses")
    };
    for (name, role, http) in [
        ("monitor", Role::Monitor, "0.0.0.0:6101"),
        ("dns", Role::Dns, "0.0.0.0:6100"),
        ("collator", Role::Collator, "0.0.0.0:9000"),
    ] {
        let cfg = NodeConfig::resolve(&read(name), &Overrides::default()).expect("resolves");
        assert_eq!(cfg.role, role, "{name}: {}", cfg.role_source);
        assert!(
            cfg.role_source.contains("Go config"),
            "{name}: {}",
            cfg.role_source
        );
        assert_eq!(cfg.http.to_string(), http, "{name}: its own API section");
    }
    // A flag still wins.
    let o = Overrides {
        role: Some("monitor".into()),
        ..Overrides::default()
    };
    let cfg = NodeConfig::resolve(&read("collator"), &o).expect("resolves");
    assert_eq!(
        (cfg.role, cfg.role_source.as_str()),
        (Role::Monitor, "--role")
    );
    // Sections of two programs: refused, naming the flag to add.
    let f = FileConfig::parse(
        r#"{"Checks":[{"Name":"ping","Enabled":1,"CheckType":"site"}],"CollatorApi":{"ListenPort":"9000"}}"#,
    )
    .expect("parses");
    let e = NodeConfig::resolve(&f, &Overrides::default())
        .expect_err("ambiguous")
        .to_string();
    assert!(
        e.contains("--role")
            && e.contains("monitor ← Checks")
            && e.contains("collator ← CollatorApi"),
        "{e}"
    );
    // Nothing decisive: a monitor, as before.
    let cfg = NodeConfig::resolve(&FileConfig::default(), &Overrides::default()).expect("resolves");
    assert_eq!(cfg.role, Role::Monitor);
}

#[test]
fn go_listen_addresses_are_accepted_as_go_accepts_them() {
    for (addr, want) in [
        ("", "0.0.0.0:6101"),
        ("::", "[::]:6101"),
        ("::1", "[::1]:6101"),
        ("localhost", "127.0.0.1:6101"),
        ("10.0.0.5", "10.0.0.5:6101"),
    ] {
        let text = format!(r#"{{"MonitorApi":{{"ListenAddress":"{addr}","ListenPort":"6101"}}}}"#);
        let f = FileConfig::parse(&text).expect("parses");
        let cfg = NodeConfig::resolve(&f, &Overrides::default()).expect("resolves");
        assert_eq!(cfg.http.to_string(), want, "{addr:?}");
    }
    let f =
        FileConfig::parse(r#"{"MonitorApi":{"ListenAddress":"no such host","ListenPort":"6101"}}"#)
            .expect("parses");
    let e = NodeConfig::resolve(&f, &Overrides::default())
        .expect_err("refused")
        .to_string();
    assert!(e.contains("MonitorApi.ListenAddress/ListenPort"), "{e}");
    assert!(!e.contains("(role)"), "{e}");
}

/// Issue #16 item 3: Go's decoder applies keys in order, case-insensitively: the last wins.
#[test]
fn case_duplicate_keys_resolve_as_go_decodes_them() {
    let file = FileConfig::parse(
        r#"{"Nats":{"NodeID":"x","nodeid":"y","Url":"nats://127.0.0.1:4222"},
            "monitorapi":{"ListenAddress":"127.0.0.1","ListenPort":"7001"},
            "MonitorApi":{"listenport":"7002"}}"#,
    )
    .expect("parses");
    assert_eq!(file.nats_node_id.as_deref(), Some("y"));
    let cfg = NodeConfig::resolve(&file, &Overrides::default()).expect("resolves");
    assert_eq!(cfg.node_id.as_str(), "y");
    assert_eq!(
        cfg.http.to_string(),
        "127.0.0.1:7002",
        "the second MonitorApi merges into the first, as Go decodes into one struct"
    );
}
