//! `portcullis`: a TLS-terminating edge gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use portcullis::{
    App, Ingress, IngressArgs, IngressError, KubernetesArgs, LogFormat, ProxyArgs, StartError,
};
use portcullis_config::{Config, Problem};

/// mimalloc: 4% fewer instructions per proxied HTTP/1.1 request than glibc's malloc, 7% per
/// HTTP/2 request, and a fifth less memory with 10,000 sites (docs/performance-steps.md#step-26).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A TLS-terminating edge gateway", long_about = None)]
struct Cli {
    /// Log output format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "pretty",
        env = "PORTCULLIS_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Threads that serve connections (default: one per CPU).
    #[arg(long, global = true, env = "PORTCULLIS_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// After waking for I/O, keep polling for this long before sleeping again (e.g. 200us;
    /// default off): lower latency for the CPU it spins.
    #[arg(long, global = true, env = "PORTCULLIS_BUSY_POLL", value_parser = busy_poll)]
    busy_poll: Option<Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground.
    Run {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print a summary; exit 2 if it is invalid. With
    /// `--kubernetes`, read the cluster once instead and report as `ingress` would serve it.
    Check {
        /// The YAML config file (with `--kubernetes`: the optional base config).
        #[arg(long, short, required_unless_present = "kubernetes")]
        config: Option<PathBuf>,
        /// Read the Ingresses of the cluster once, translate them, and print the summary,
        /// every problem and every unsupported annotation; exit 2 if there are problems.
        #[arg(long)]
        kubernetes: bool,
        /// With `--kubernetes`: where the cluster is and what of it is ours.
        #[command(flatten)]
        cluster: KubernetesArgs,
    },
    /// Ask the running gateway to reload its config file (through its admin listener).
    Reload {
        /// The YAML config file (read for the admin address and token).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List every name's certificate: source, issuer, expiry, next renewal, last error.
    Certs {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Find what stands between users and a working HTTPS site: listeners, names,
    /// certificates, origins, redirects and mixed content, each with its fix. Exit 0 when
    /// all pass, 1 on warnings only, 2 on failures.
    Doctor {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        args: portcullis::DoctorArgs,
    },
    /// Run a one-site gateway with no config file, with a certificate from the local CA.
    Proxy {
        /// Host (and port, default 443) to answer on, e.g. `app.localhost:8443`.
        #[arg(long)]
        from: String,
        /// Origin URL, e.g. `http://127.0.0.1:3000` (`127.0.0.1:3000` means http).
        #[arg(long)]
        to: String,
        /// Origin mode: flexible, full or strict (default: from the URL's scheme).
        #[arg(long)]
        mode: Option<String>,
        /// Where the local CA keeps its files.
        #[arg(long, default_value = "./data/ca")]
        local_ca_dir: String,
        /// Admin listener (`/healthz`, `/readyz`), off unless given.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Run as a Kubernetes ingress controller: the routes come from the cluster's
    /// Ingresses, the rest from the optional base config.
    Ingress(IngressArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    portcullis::init_logging(cli.log_format);
    portcullis_tls::install_default_provider();
    // Every connection is a file descriptor; the usual soft limit of 1024 is far too low
    // for an edge. Raise it to the hard limit, as nginx's worker_rlimit_nofile would.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let runtime = match portcullis::build_runtime(cli.workers, cli.busy_poll) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Installed before anything starts, so a SIGHUP never meets the default action
        // (which would end the process).
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        match cli.command {
            Command::Check {
                config,
                kubernetes: true,
                cluster,
            } => check_kubernetes(&cluster, config.as_deref()).await,
            Command::Check { config, .. } => match config {
                Some(config) => check(&config),
                None => report(&[Problem::new("--config", "a config file is required")]),
            },
            Command::Ingress(args) => ingress(args).await,
            Command::Certs { config } => match load(&config) {
                Ok(c) => {
                    print!("{}", portcullis::render_certs(&c).await);
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            },
            Command::Doctor { config, args } => doctor(&config, &args).await,
            Command::Run { config } => run(App::start_from_file(&config).await, hangup).await,
            Command::Reload { config } => reload(&config).await,
            Command::Proxy {
                from,
                to,
                mode,
                local_ca_dir,
                admin,
            } => {
                let args = ProxyArgs {
                    from,
                    to,
                    mode,
                    local_ca_dir,
                    admin,
                };
                match portcullis::proxy_config(&args) {
                    Ok(c) => run(App::start(c).await, hangup).await,
                    Err(problems) => report(&problems),
                }
            }
        }
    })
}

/// `--busy-poll`: a duration up to a second (a bare number would be seconds, which is never
/// meant here).
fn busy_poll(text: &str) -> Result<Duration, String> {
    let d = portcullis_config::parse_duration(text).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(1) {
        return Err(format!(
            "`{text}` is more than 1s; busy polling is for microseconds, e.g. 200us"
        ));
    }
    Ok(d)
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    portcullis_config::load(path).map_err(|e| report(&e.problems()))
}

fn report(problems: &[Problem]) -> ExitCode {
    for p in problems {
        eprintln!("error: {p}");
    }
    let n = problems.len();
    eprintln!(
        "{n} problem{} found; nothing was started",
        if n == 1 { "" } else { "s" }
    );
    ExitCode::from(EXIT_CONFIG)
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match portcullis::check(&config) {
        Ok(certs) => {
            print!("{}", portcullis::render_summary(&config, &certs));
            for w in &certs.warnings {
                println!("warning: {w}");
            }
            if let Some(w) = config.admin.exposure_warning() {
                println!("warning: {w}");
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(problems) => report(&problems),
    }
}

async fn check_kubernetes(cluster: &KubernetesArgs, base: Option<&std::path::Path>) -> ExitCode {
    match portcullis::check_kubernetes(cluster, base).await {
        Ok(found) => {
            print!("{}", found.output);
            if found.problems == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_CONFIG)
            }
        }
        Err(e) => ingress_failed(&e),
    }
}

/// `portcullis ingress`: serves as soon as its listeners are bound, routes from the
/// first sync on; stops on SIGTERM or SIGINT as `run` does.
async fn ingress(args: IngressArgs) -> ExitCode {
    match Ingress::start(args).await {
        Ok(ingress) => {
            ingress.run(shutdown_signal()).await;
            ExitCode::SUCCESS
        }
        Err(e) => ingress_failed(&e),
    }
}

fn ingress_failed(e: &IngressError) -> ExitCode {
    match e {
        IngressError::Config(problems) => report(problems),
        IngressError::Start(StartError::Config(problems)) => report(problems),
        e => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn doctor(path: &std::path::Path, args: &portcullis::DoctorArgs) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match portcullis::doctor(config, args).await {
        Ok(report) => {
            let text = if args.json {
                report.render_json() + "\n"
            } else {
                report.render_text()
            };
            // `portcullis doctor | head` closes the pipe early: that is not a failure.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            report.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn reload(config: &std::path::Path) -> ExitCode {
    let outcome = match portcullis::admin_target(config) {
        Ok(target) => portcullis::request_reload(&target).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(portcullis::ReloadOutcome::Reloaded(summary)) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(portcullis::ReloadOutcome::Refused(problems)) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!("reload refused; the gateway keeps its current configuration");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    started: Result<App, StartError>,
    hangup: Option<tokio::signal::unix::Signal>,
) -> ExitCode {
    let app = match started {
        Ok(app) => app,
        Err(StartError::Config(problems)) => return report(&problems),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let controller = app.controller().clone();
    let hangups = tokio::spawn(async move {
        let Some(mut hup) = hangup else {
            tracing::warn!("cannot listen for SIGHUP; reload with `portcullis reload`");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading");
            let _ = controller.reload().await;
        }
    });
    // A drain that ran out of time has already been logged; stopping is still a success.
    app.run(shutdown_signal()).await;
    hangups.abort();
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending().await
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
