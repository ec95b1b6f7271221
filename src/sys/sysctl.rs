//! Kernel parameters, behind [`Sysctl`].

use std::path::PathBuf;

/// Reads and writes `/proc/sys` keys, written with dots
/// (`net.ipv4.conf.all.route_localnet`).
pub trait Sysctl: Send + Sync {
    fn get(&self, key: &str) -> std::io::Result<String>;
    fn set(&self, key: &str, value: &str) -> std::io::Result<()>;
}

/// The real `/proc/sys` of the network namespace this process runs in.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSysctl;

impl Sysctl for ProcSysctl {
    fn get(&self, key: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path(key)).map(|v| v.trim().to_string())
    }

    fn set(&self, key: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(path(key), value)
    }
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// An in-memory sysctl for tests.
#[derive(Debug, Default)]
pub struct FakeSysctl {
    values: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

// === impl FakeSysctl ===

impl FakeSysctl {
    pub fn value(&self, key: &str) -> Option<String> {
        self.values.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }
}

impl Sysctl for FakeSysctl {
    fn get(&self, key: &str) -> std::io::Result<String> {
        self.value(key)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, key.to_string()))
    }

    fn set(&self, key: &str, value: &str) -> std::io::Result<()> {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), value.to_string());
        Ok(())
    }
}

/// Reads and writes kernel parameters with `sysctl(8)` through a command
/// runner, e.g. inside a network namespace via [`super::NetnsRunner`].
#[derive(Clone)]
pub struct RunnerSysctl {
    runner: std::sync::Arc<dyn super::CommandRunner>,
}

// === impl RunnerSysctl ===

impl RunnerSysctl {
    pub fn new(runner: std::sync::Arc<dyn super::CommandRunner>) -> Self {
        Self { runner }
    }

    fn run(&self, args: &[&str]) -> std::io::Result<String> {
        let out = self
            .runner
            .run("sysctl", args, None)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if out.status != 0 {
            return Err(std::io::Error::other(format!(
                "sysctl {}: {}",
                args.join(" "),
                out.stderr.trim()
            )));
        }
        Ok(out.stdout.trim().to_string())
    }
}

impl Sysctl for RunnerSysctl {
    fn get(&self, key: &str) -> std::io::Result<String> {
        self.run(&["-n", key])
    }

    fn set(&self, key: &str, value: &str) -> std::io::Result<()> {
        self.run(&["-q", "-w", &format!("{key}={value}")]).map(|_| ())
    }
}
