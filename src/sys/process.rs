//! Running external tools, behind [`CommandRunner`]. The one place that may
//! use `std::process::Command`.
#![allow(clippy::disallowed_types)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// What a finished command returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Why a command could not be run at all (a non-zero exit is not an error
/// here: callers read `status`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started (not installed, not executable).
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing its input or reading its output failed.
    #[error("i/o with {program} failed: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs programs. Implementations: [`RealRunner`], [`FakeRunner`].
pub trait CommandRunner: Send + Sync {
    /// Runs `program args…`, feeding `stdin`, and waits for it.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<CommandOutput, RunError>;
}

/// Runs real processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealRunner;

impl CommandRunner for RealRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<CommandOutput, RunError> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: program.to_string(),
                source,
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that exits early closes its stdin; its exit status and
            // stderr then tell the real story, so a broken pipe is not fatal.
            if let Err(e) = pipe.write_all(input)
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(RunError::Io {
                    program: program.to_string(),
                    source: e,
                });
            }
        }
        let out = child.wait_with_output().map_err(|source| RunError::Io {
            program: program.to_string(),
            source,
        })?;
        Ok(CommandOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// One call seen by a [`FakeRunner`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeCall {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: String,
}

type Responder = dyn Fn(&FakeCall) -> CommandOutput + Send + Sync;

/// Records calls and answers them with a programmable responder
/// (success with empty output by default).
#[derive(Clone, Default)]
pub struct FakeRunner {
    calls: Arc<Mutex<Vec<FakeCall>>>,
    responder: Option<Arc<Responder>>,
}

// === impl FakeRunner ===

impl FakeRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers every call with `f(call)`.
    pub fn with_responder(f: impl Fn(&FakeCall) -> CommandOutput + Send + Sync + 'static) -> Self {
        Self {
            calls: Arc::default(),
            responder: Some(Arc::new(f)),
        }
    }

    pub fn calls(&self) -> Vec<FakeCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn clear(&self) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl std::fmt::Debug for FakeRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRunner")
            .field("calls", &self.calls().len())
            .finish()
    }
}

impl CommandRunner for FakeRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<CommandOutput, RunError> {
        let call = FakeCall {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: stdin
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default(),
        };
        let out = self.responder.as_ref().map(|r| r(&call)).unwrap_or_default();
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call);
        Ok(out)
    }
}

/// Runs real processes inside a named network namespace
/// (`ip netns exec NAME program …`): how tests run a backend against a
/// namespace they built, and how an operator can try kproxy in one.
#[derive(Clone, Debug)]
pub struct NetnsRunner {
    netns: String,
}

// === impl NetnsRunner ===

impl NetnsRunner {
    pub fn new(netns: impl Into<String>) -> Self {
        Self { netns: netns.into() }
    }
}

impl CommandRunner for NetnsRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<CommandOutput, RunError> {
        let mut full: Vec<&str> = vec!["netns", "exec", &self.netns, program];
        full.extend_from_slice(args);
        RealRunner.run("ip", &full, stdin)
    }
}
