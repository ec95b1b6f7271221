//! kproxy's entry point: parse flags, start logging, run a command, map
//! errors to exit codes (2 = bad flags or configuration, 1 = runtime failure).

use std::process::ExitCode;

use clap::Parser;
use kproxy::config::{Cli, Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let flags = match &cli.command {
        Some(Command::Render(args)) => &args.flags,
        None => &cli.flags,
    };
    // Validate everything before binding or touching anything.
    let cfg = match Config::from_flags(flags) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("kproxy: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Render(args)) = &cli.command
        && args.manifests.is_none()
        && cfg.kubeconfig.is_none()
        && cfg.master.is_none()
    {
        eprintln!("kproxy: render needs --manifests DIR, or --kubeconfig/--master to read a cluster");
        return ExitCode::from(2);
    }
    init_tracing(&cfg, cli.command.is_some());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kproxy: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Some(Command::Render(args)) => {
                let mut stdout = std::io::stdout().lock();
                kproxy::cmd::render::run(args, &cfg, &mut stdout).await
            }
            None if cfg.cleanup => kproxy::cmd::cleanup::run(&cfg),
            None => kproxy::cmd::run::run(&cfg).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kproxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A command-line usage error as one line naming the problem (clap's tips
/// kept on it), exit code 2, like every other configuration error.
/// `--help` and `--version` print as usual and exit 0.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let problem = first.strip_prefix("error: ").unwrap_or(first);
    let mut line = format!("kproxy: {problem}");
    for extra in lines {
        if let Some(tip) = extra.strip_prefix("tip: ") {
            line.push_str("; ");
            line.push_str(tip);
        } else if extra.starts_with("[possible values") {
            line.push(' ');
            line.push_str(extra);
        }
    }
    eprintln!("{line} (see kproxy --help)");
    ExitCode::from(2)
}

/// Logs go to stderr (render prints its result on stdout). `-v` maps to
/// levels as kube-proxy's klog verbosity roughly does; RUST_LOG overrides.
fn init_tracing(cfg: &Config, quiet_default: bool) {
    let level = match cfg.verbosity {
        0 if quiet_default => "warn",
        0 | 1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("kproxy={level},kube=warn,warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
