//! The release archive and its krew manifest, as `make dist` writes them (deploy/dist.sh, here on
//! the test build of the binary): the manifest has the shape krew requires and describes the
//! archive exactly, kubectl finds the unpacked binary as its `switchyard` plugin, and krew itself
//! installs the archive from the manifest.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{repo_root, stderr, stdout, testenv_bin};

/// What `make dist` writes into `out`: the archive's path and the parsed manifest.
fn dist(out: &Path) -> (PathBuf, Value) {
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    let run = Command::new(repo_root().join("deploy/dist.sh"))
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .arg(out)
        .arg(&version)
        .output()
        .expect("run deploy/dist.sh");
    assert!(run.status.success(), "dist.sh failed: {}", stderr(&run));
    let archive = out.join(format!("switchyard_{version}_linux_amd64.tar.gz"));
    assert!(archive.is_file(), "no {}", archive.display());
    let manifest = std::fs::read_to_string(out.join("plugins/switchyard.yaml")).expect("read the manifest");
    (archive, serde_saphyr::from_str(&manifest).expect("the manifest is YAML"))
}

fn run(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn sha256(path: &Path) -> String {
    let out = run(Path::new("sha256sum"), &[path.to_str().expect("utf-8 path")], &[]);
    stdout(&out).split_whitespace().next().unwrap_or_default().to_string()
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| panic!("{what} is missing or empty: {value}"))
}

#[test]
fn the_archive_and_manifest_are_what_krew_installs() {
    let out = tempfile::tempdir().expect("temp dir");
    let (archive, manifest) = dist(out.path());

    // The manifest's shape (krew's v1alpha2 Plugin).
    assert_eq!(manifest["apiVersion"], "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "switchyard");
    let spec = &manifest["spec"];
    assert_eq!(text(&spec["version"], "spec.version"), format!("v{}", env!("CARGO_PKG_VERSION")));
    assert!(text(&spec["homepage"], "spec.homepage").starts_with("https://"));
    assert!(text(&spec["shortDescription"], "spec.shortDescription").len() <= 50, "krew wants a short one");
    text(&spec["description"], "spec.description");
    let platforms = spec["platforms"].as_array().expect("spec.platforms");
    assert_eq!(platforms.len(), 1, "one platform is built: {platforms:?}");
    let platform = &platforms[0];
    assert_eq!(platform["selector"]["matchLabels"], serde_json::json!({"os": "linux", "arch": "amd64"}));
    let name = archive.file_name().and_then(|n| n.to_str()).expect("archive name");
    let uri = text(&platform["uri"], "uri");
    assert!(uri.starts_with("https://") && uri.ends_with(&format!("/{name}")), "{uri}");
    let sha = text(&platform["sha256"], "sha256");
    assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{sha}");
    assert_eq!(sha, sha256(&archive), "the manifest's sha256 is not the archive's");
    assert_eq!(platform["bin"], "kubectl-switchyard", "krew links the binary under the plugin's name");
    let files = platform["files"].as_array().expect("files");

    // The archive's layout matches it: every `from` is there, the binary executable, LICENSE inside.
    let listing = run(Path::new("tar"), &["-tvzf", archive.to_str().expect("utf-8 path")], &[]);
    assert!(listing.status.success(), "{}", stderr(&listing));
    let listing = stdout(&listing);
    let entry = |path: &str| listing.lines().find(|l| l.split_whitespace().last() == Some(path));
    for file in files {
        let from = text(&file["from"], "files[].from");
        assert!(entry(from).is_some(), "{from} is not in the archive:\n{listing}");
        text(&file["to"], "files[].to");
    }
    assert!(files.iter().any(|f| f["from"] == "LICENSE"), "krew copies the LICENSE");
    let bin = entry("kubectl-switchyard").expect("kubectl-switchyard in the archive");
    assert!(bin.starts_with("-rwxr-xr-x 0/0"), "not an executable owned by root: {bin}");
    for extra in ["LICENSE", "completions/switchyard.bash", "man/switchyard.1", "man/switchyard-switch.1"] {
        assert!(entry(extra).is_some(), "{extra} missing:\n{listing}");
    }

    // Unpacked onto PATH, kubectl finds and runs it as `kubectl switchyard`.
    let unpacked = tempfile::tempdir().expect("temp dir");
    let untar = run(
        Path::new("tar"),
        &["-xzf", archive.to_str().expect("utf-8"), "-C", unpacked.path().to_str().expect("utf-8")],
        &[],
    );
    assert!(untar.status.success(), "{}", stderr(&untar));
    let path = unpacked.path();
    let kubectl = testenv_bin("kubectl");
    let plugins = run(&kubectl, &["plugin", "list"], &[("PATH", path)]);
    assert!(stdout(&plugins).contains("kubectl-switchyard"), "{}{}", stdout(&plugins), stderr(&plugins));
    let help = run(&kubectl, &["switchyard", "switch", "--help"], &[("PATH", path)]);
    assert!(help.status.success() && stdout(&help).contains("kubectl switchyard switch"), "{}", stdout(&help));

    // And krew installs it from the manifest and the archive, checking the sha256 itself.
    let krew = repo_root().join("target/krew/bin/krew");
    assert!(krew.exists(), "{} is missing: run `make krew`", krew.display());
    let root = tempfile::tempdir().expect("krew root");
    let manifest_path = out.path().join("plugins/switchyard.yaml");
    let install = run(
        &krew,
        &[
            "install",
            "--manifest",
            manifest_path.to_str().expect("utf-8"),
            "--archive",
            archive.to_str().expect("utf-8"),
        ],
        &[("KREW_ROOT", root.path())],
    );
    assert!(install.status.success(), "krew install failed: {}{}", stdout(&install), stderr(&install));
    let installed = run(&root.path().join("bin/kubectl-switchyard"), &["--version"], &[]);
    assert_eq!(stdout(&installed).trim(), format!("switchyard {}", env!("CARGO_PKG_VERSION")));

    // A manifest whose sha256 is not the archive's is refused by krew: the check above is real.
    let wrong = std::fs::read_to_string(&manifest_path).expect("read").replace(sha, &"0".repeat(64));
    let wrong_dir = tempfile::tempdir().expect("temp dir");
    let wrong_path = wrong_dir.path().join("switchyard.yaml");
    std::fs::write(&wrong_path, wrong).expect("write");
    let other_root = tempfile::tempdir().expect("krew root");
    let refused = run(
        &krew,
        &["install", "--manifest", wrong_path.to_str().expect("utf-8"), "--archive", archive.to_str().expect("utf-8")],
        &[("KREW_ROOT", other_root.path())],
    );
    assert!(!refused.status.success(), "krew installed an archive whose sha256 differs");
    assert!(stderr(&refused).contains("checksum does not match"), "{}", stderr(&refused));
}
