//! vswitchd: the per-node userspace switch. See `vswitch::control::config` for the TOML file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vswitch::control::{server, Config, Switch};

#[derive(Parser)]
#[command(name = "vswitchd", version, about = "Userspace L3 switch for pods with native VPC addresses")]
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
    // Logs go to stderr (stdout stays free), with colour only on a terminal.
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
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

/// Takes `STATE_DIR/vswitchd.lock` for the life of the process, before anything else is touched:
/// a second vswitchd on the node would take over the API socket and open extra queues on every
/// pod's TAP. Refused with the running one's pid instead.
fn lock_node(config: &Config) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use std::io::{Read, Seek, Write};
    let path = config.state_dir.join("vswitchd.lock");
    std::fs::create_dir_all(&config.state_dir).map_err(|e| format!("{}: {e}", config.state_dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| write!(lock, "{}", std::process::id()));
            Ok(lock)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(format!(
                "another vswitchd (pid {}) is running with state directory {}; refusing to start a second one",
                pid.trim(),
                config.state_dir.display()
            ))
        }
        Err((_, e)) => Err(format!("locking {}: {e}", path.display())),
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let _lock = lock_node(&config)?;
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
