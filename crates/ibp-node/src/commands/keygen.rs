//! `ibp-node keygen`: a new node key (an NKey user seed) in a file only its owner reads.

use std::io::Write;
use std::path::Path;

use ibp_trust::Identity;

/// Writes a new seed to `out` (mode 0600; an existing file is never overwritten) and
/// returns the identity, whose public key goes into the other nodes' trust lists.
pub fn keygen(out: &Path) -> Result<Identity, String> {
    let id = Identity::generate();
    let seed = id.seed().map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "{} exists; refusing to overwrite a key (move it away first)",
            out.display()
        ),
        _ => format!("cannot create {}: {e}", out.display()),
    })?;
    f.write_all(format!("{seed}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_private_seed_once_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("node.nk");
        let id = keygen(&p).expect("first");
        let text = std::fs::read_to_string(&p).expect("read");
        let back = Identity::from_seed(&text).expect("seed");
        assert_eq!(back.public_key(), id.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = keygen(&p).expect_err("second");
        assert!(e.contains("refusing to overwrite"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            text,
            "untouched"
        );
    }
}
