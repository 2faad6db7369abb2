//! vswitchd: the per-node userspace switch. See `vswitch::control::config` for the TOML file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vswitch::control::{server, Config, Switch};

#[derive(Parser)]
#[command(name = "vswitchd", about = "Userspace L3 switch for pods with native VPC addresses")]
struct Args {
    /// TOML configuration; without it the documented defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override: control API socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Override: state directory (ports to re-attach after a restart).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Override: metrics listen address ("" disables).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Override: name of the host port TAP.
    #[arg(long)]
    host_port: Option<String>,
    /// Override: number of forwarding threads.
    #[arg(long)]
    workers: Option<usize>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vswitchd: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(v) = args.socket {
        config.socket = v;
    }
    if let Some(v) = args.state_dir {
        config.state_dir = v;
    }
    if let Some(v) = args.metrics_addr {
        config.metrics_addr = v;
    }
    if let Some(v) = args.host_port {
        config.host_port.name = v;
    }
    if let Some(v) = args.workers {
        config.workers = v;
    }
    if let Err(e) = config.validate() {
        eprintln!("vswitchd: {e}");
        return ExitCode::from(2);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let socket = config.socket.clone();
    let metrics_addr = config.metrics_addr.clone();
    let api = server::bind_api(&socket).map_err(|e| format!("API socket {}: {e}", socket.display()))?;
    let (switch, slow_path) = Switch::start(config).await?;
    tokio::spawn(server::serve_api(api, switch.clone()));
    tokio::spawn(server::serve_slow_path(slow_path, switch.clone()));
    if !metrics_addr.is_empty() {
        let listener =
            tokio::net::TcpListener::bind(&metrics_addr).await.map_err(|e| format!("metrics {metrics_addr}: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
        tokio::spawn(server::serve_metrics(listener, switch.clone()));
    }
    tracing::info!(socket = %socket.display(), "ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping; pod TAPs persist for the next start");
    switch.shutdown();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
