//! Snapshot tests of `kproxy render` for the example manifests, in every
//! mode that renders rules, and checks that the kernel's own loaders
//! (`iptables-restore --test`, `nft -c`) accept them.
//!
//! Regenerate after an intended change with `UPDATE_SNAPSHOTS=1 cargo test
//! --test render_snapshots`, and review the diff.
#![allow(clippy::disallowed_types)] // tests run tools directly

#[path = "support/netns.rs"]
mod netns;

use std::path::PathBuf;

use kproxy::config::{Cli, Command, Config};

fn render(args: &[&str]) -> String {
    let mut argv = vec!["kproxy", "render", "--manifests"];
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/examples");
    let dir = dir.to_string_lossy().to_string();
    argv.push(&dir);
    argv.extend_from_slice(args);
    let cli = <Cli as clap::Parser>::try_parse_from(argv).expect("flags");
    let Some(Command::Render(render_args)) = cli.command else {
        panic!("render subcommand")
    };
    let cfg = Config::from_flags(&render_args.flags).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut out = Vec::new();
    rt.block_on(kproxy::cmd::render::run(&render_args, &cfg, &mut out))
        .expect("render");
    String::from_utf8(out).expect("utf8")
}

fn check_snapshot(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, got).expect("write snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == got,
        "snapshot {name} differs; rerun with UPDATE_SNAPSHOTS=1 and review.\n--- want\n{want}\n--- got\n{got}"
    );
}

#[test]
fn iptables_rules_for_the_examples() {
    let text = render(&["--proxy-mode", "iptables", "--cluster-cidr", "10.244.0.0/16"]);
    check_snapshot("iptables-examples.rules", &text);
}

#[test]
fn service_map_table_for_the_examples() {
    let text = render(&["--format", "table"]);
    check_snapshot("examples.table", &text);
}

#[test]
fn iptables_restore_accepts_the_rendered_rules() {
    if !netns::require_root_tools(&["iptables-restore"]) {
        return;
    }
    let text = render(&["--proxy-mode", "iptables", "--cluster-cidr", "10.244.0.0/16"]);
    let ns = netns::Netns::new("render").expect("netns");
    // --test parses and checks every rule against the kernel without committing.
    let out = ns
        .exec_with_input(&["iptables-restore", "--test", "--noflush"], text.as_bytes())
        .expect("run iptables-restore");
    assert!(
        out.status.success(),
        "iptables-restore --test refused the rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const NFT_ARGS: [&str; 4] = ["--proxy-mode", "nftables", "--cluster-cidr", "10.244.0.0/16"];

#[test]
fn nftables_script_for_the_examples() {
    check_snapshot("nftables-examples.nft", &render(&NFT_ARGS));
}

#[test]
fn nft_accepts_the_rendered_script() {
    if !netns::require_root_tools(&["nft"]) {
        return;
    }
    let text = render(&NFT_ARGS);
    let ns = netns::Netns::new("render-nft").expect("netns");
    // -c parses and checks every command against the kernel without committing.
    let out = ns
        .exec_with_input(&["nft", "-c", "-f", "-"], text.as_bytes())
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft -c refused the script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
