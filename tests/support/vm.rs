//! A throwaway VM with a real kernel IPVS, for the ipvs-mode tests.
//!
//! Include from a test crate with `#[path = "support/vm.rs"] mod vm;`.
//!
//! The host kernel has no `ip_vs` (and cannot load modules), so the ipvs
//! suite runs inside qemu with a stock Debian kernel:
//!
//! ```text
//!  host: cargo test --test ipvs_vm
//!   ├─ each #[test] asks suite_report() for its check ──▶ the first one boots the VM (OnceLock)
//!   │    tests/vm/build-initramfs.sh target/ipvs-vm … <this test binary> --exact in_vm_suite
//!   │    qemu-system-x86_64 -nodefaults (no network device) -kernel vmlinux -initrd …
//!   └─ VM: /init runs the same binary with KPROXY_IN_VM=1; `in_vm_suite` runs every check,
//!      each framed by KPROXY_VM_BEGIN <name> … KPROXY_VM_CHECK PASS|FAIL <name> on the serial console
//! ```
//!
//! One boot serves the whole suite (a TCG boot costs seconds). The host side
//! parses the console: each host test asserts its own check, and a failure
//! prints that check's own output. Safety: the VM has no network device at
//! all, so nothing it sends can leave it; tests inside still use only
//! 198.18.0.0/15 and fd00::/8.
//!
//! Prerequisites: root, qemu-system-x86_64 and what the builder script
//! lists (`bash .ci/run` installs them). When one is missing the tests fail
//! under `CI=true` and otherwise print `SKIP: <reason>` and pass. qemu runs
//! under TCG: this project's `/dev/kvm` is a PVM hypervisor that cannot run a
//! stock kernel. `KPROXY_VM_ACCEL=kvm` uses KVM on a host where it works.

#![allow(dead_code)]
#![allow(clippy::disallowed_types)] // test harness: runs the builder and qemu directly

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Set (to 1) in the VM's environment: the test binary runs its in-VM body.
pub const IN_VM_ENV: &str = "KPROXY_IN_VM";
/// The whole boot, suite included, is killed after this long.
const VM_TIMEOUT: Duration = Duration::from_secs(240);
const BUILDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/build-initramfs.sh");

/// True inside the VM.
pub fn in_vm() -> bool {
    std::env::var_os(IN_VM_ENV).is_some()
}

// ---------------------------------------------------------------------------
// In the VM
// ---------------------------------------------------------------------------

/// Runs one named check, catching its panic; prints its frame and verdict.
/// Returns whether it passed.
pub fn check(name: &str, f: impl FnOnce()) -> bool {
    println!("KPROXY_VM_BEGIN {name}");
    let ok = catch_unwind(AssertUnwindSafe(f)).is_ok();
    println!("KPROXY_VM_CHECK {} {name}", if ok { "PASS" } else { "FAIL" });
    ok
}

// ---------------------------------------------------------------------------
// On the host
// ---------------------------------------------------------------------------

/// What one VM run reported.
#[derive(Debug, Default)]
pub struct Report {
    /// Check name → (passed, its output).
    pub checks: BTreeMap<String, (bool, String)>,
    /// The payload's exit status, if it got that far.
    pub exit: Option<i32>,
    /// The whole serial console.
    pub console: String,
    /// qemu start to power-off.
    pub wall: Duration,
}

/// Why the suite did not run.
#[derive(Debug, Clone)]
pub enum NotRun {
    /// A prerequisite is missing: skip outside CI.
    Missing(String),
    /// It should have run and did not: always a failure.
    Broken(String),
}

fn is_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// The suite's report, booting the VM on first use (once per process).
/// `in_vm_test` is the name of the #[test] that runs the in-VM body.
/// `extra_bins` are more executables the VM needs at their host paths.
pub fn suite_report(in_vm_test: &str, extra_bins: &[&str]) -> &'static Result<Report, NotRun> {
    static REPORT: OnceLock<Result<Report, NotRun>> = OnceLock::new();
    REPORT.get_or_init(|| boot(in_vm_test, extra_bins))
}

/// Host side of one check: passes when the VM reported it passed; skips
/// (returns) when the VM cannot run outside CI; panics otherwise, with the
/// check's own output.
pub fn expect_check(in_vm_test: &str, extra_bins: &[&str], name: &str) {
    match suite_report(in_vm_test, extra_bins) {
        Err(NotRun::Missing(why)) if !is_ci() => eprintln!("SKIP: ipvs VM cannot run: {why}"),
        Err(NotRun::Missing(why)) => panic!("\n\n=== ipvs VM cannot run in CI (CI=true): {why} ===\n"),
        Err(NotRun::Broken(why)) => panic!("ipvs VM run failed: {why}"),
        Ok(report) => match report.checks.get(name) {
            Some((true, out)) => {
                // A case the mode cannot honour passes in the VM but says
                // why, past the test harness's capture (as datapath's marks).
                for line in out.lines().filter(|l| l.starts_with("SKIPPED ")) {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            }
            Some((false, out)) => panic!("in-VM check {name} failed:\n{out}"),
            None => panic!(
                "in-VM check {name} never reported (payload exit {:?}); console:\n{}",
                report.exit,
                tail(&report.console, 80)
            ),
        },
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// `target/` of this build (the test binary is `target/<profile>/deps/x`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
}

fn boot(in_vm_test: &str, extra_bins: &[&str]) -> Result<Report, NotRun> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NotRun::Missing("not running as root".into()));
    }
    if which("qemu-system-x86_64").is_none() {
        return Err(NotRun::Missing(
            "qemu-system-x86_64 not installed (bash .ci/run installs it)".into(),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| NotRun::Broken(format!("current_exe: {e}")))?;
    let cache = target_dir().join("ipvs-vm");
    let initrd = cache.join(format!("initrd-{}.cpio", std::process::id()));
    let _cleanup = RemoveOnDrop(initrd.clone());
    let built = Command::new("bash")
        .env("KPROXY_VM_BINS", extra_bins.join(" "))
        .arg(BUILDER)
        .arg(&cache)
        .arg(&initrd)
        .arg(&exe)
        .args(["--exact", in_vm_test, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NotRun::Broken(format!("cannot run {BUILDER}: {e}")))?;
    let stderr = String::from_utf8_lossy(&built.stderr);
    match built.status.code() {
        Some(0) => {}
        Some(3) => return Err(NotRun::Missing(stderr.trim().to_string())),
        _ => return Err(NotRun::Broken(format!("{BUILDER} failed: {}", stderr.trim()))),
    }
    let stdout = String::from_utf8_lossy(&built.stdout);
    let kernel = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kernel="))
        .ok_or_else(|| NotRun::Broken(format!("builder printed no kernel: {stdout}")))?;
    let (console, wall) = run_qemu(Path::new(kernel), &initrd)?;
    let report = parse_console(console, wall);
    eprintln!(
        "ipvs VM: {} checks, payload exit {:?}, qemu {:.1}s",
        report.checks.len(),
        report.exit,
        report.wall.as_secs_f64()
    );
    Ok(report)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Boots the VM and returns its serial console, killing qemu (by PID) after
/// [`VM_TIMEOUT`].
fn run_qemu(kernel: &Path, initrd: &Path) -> Result<(String, Duration), NotRun> {
    let accel: &[&str] = match std::env::var("KPROXY_VM_ACCEL").as_deref() {
        Ok("kvm") => &["-enable-kvm", "-cpu", "host"],
        _ => &["-accel", "tcg", "-cpu", "max"],
    };
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(accel)
        .args([
            "-m",
            "768",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3 cryptomgr.notests"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NotRun::Broken(format!("cannot start qemu: {e}")))?;
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_end(&mut buf);
        }
        buf
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < VM_TIMEOUT => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let wall = start.elapsed();
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).replace('\r', "");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    match status {
        None => Err(NotRun::Broken(format!(
            "VM timed out after {VM_TIMEOUT:?}; console:\n{}",
            tail(&console, 80)
        ))),
        Some(s) if !console.contains("KPROXY_VM_READY") => Err(NotRun::Broken(format!(
            "VM did not come up (qemu {s}): {stderr}\n{}",
            tail(&console, 80)
        ))),
        Some(_) => Ok((console, wall)),
    }
}

/// Splits the console into checks (`KPROXY_VM_BEGIN` … `KPROXY_VM_CHECK`).
fn parse_console(console: String, wall: Duration) -> Report {
    let mut report = Report {
        wall,
        ..Report::default()
    };
    let mut current: Option<(String, String)> = None;
    for line in console.lines() {
        // (a kernel message may share a line with a marker: no ^ anchor)
        if let Some(i) = line.find("KPROXY_VM_BEGIN ") {
            current = Some((line[i + 16..].trim().to_string(), String::new()));
        } else if let Some(i) = line.find("KPROXY_VM_CHECK ") {
            let mut words = line[i + 16..].split_whitespace();
            let pass = words.next() == Some("PASS");
            let name = words.next().unwrap_or_default().to_string();
            let out = current.take().map(|(_, o)| o).unwrap_or_default();
            report.checks.insert(name, (pass, out));
        } else if let Some(i) = line.find("KPROXY_VM_EXIT=") {
            report.exit = line[i + 15..].split_whitespace().next().and_then(|c| c.parse().ok());
        } else if let Some((_, out)) = current.as_mut() {
            out.push_str(line);
            out.push('\n');
        }
    }
    report
}
