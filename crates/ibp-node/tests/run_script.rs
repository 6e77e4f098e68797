//! The `run` script at the repository root: `./run demo` and `./run node` must find the
//! binary wherever cargo builds it (`CARGO_TARGET_DIR` included). A stand-in `cargo` on
//! `PATH` records what the script asks of it and plays the built binary, so the test runs
//! in a second instead of a release build.

use std::path::Path;
use std::process::Command;

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    let mut p = std::fs::metadata(path).expect("meta").permissions();
    p.set_mode(0o755);
    std::fs::set_permissions(path, p).expect("chmod");
}

#[test]
fn run_demo_and_node_work_with_a_custom_target_dir() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().expect("dir");
    // The script cds to its own directory: give it a copy in a tree of its own.
    let tree = tmp.path().join("repo");
    std::fs::create_dir_all(&tree).expect("tree");
    std::fs::copy(repo.join("run"), tree.join("run")).expect("copy run");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let target = tmp.path().join("elsewhere");
    let calls = tmp.path().join("calls.txt");
    // `cargo build` puts a binary under $CARGO_TARGET_DIR; `cargo run` runs it.
    write_exec(
        &bin.join("cargo"),
        &format!(
            r#"#!/bin/sh
echo "$@" >> {calls}
mkdir -p "$CARGO_TARGET_DIR/release"
printf '#!/bin/sh\necho "ibp-node $*"\n' > "$CARGO_TARGET_DIR/release/ibp-node"
chmod +x "$CARGO_TARGET_DIR/release/ibp-node"
case "$1" in
  run) shift; while [ "$1" != "--" ]; do shift; done; shift; exec "$CARGO_TARGET_DIR/release/ibp-node" "$@";;
esac
"#,
            calls = calls.display()
        ),
    );
    write_exec(&bin.join("cc"), "#!/bin/sh\nexit 0\n");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (args, want) in [
        (vec!["demo", "--keep"], "ibp-node demo --keep"),
        (vec!["node", "--version"], "ibp-node --version"),
    ] {
        let out = Command::new("bash")
            .arg(tree.join("run"))
            .args(&args)
            .env("PATH", &path)
            .env("HOME", tmp.path())
            .env("CARGO_TARGET_DIR", &target)
            .env("NATS_SERVER_BIN", "/bin/true")
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim() == want,
            "./run {args:?}: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(&calls).expect("calls");
    assert!(log.lines().all(|l| l.contains("-p ibp-node")), "{log}");
}
