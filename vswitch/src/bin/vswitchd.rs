//! vswitchd: the per-node userspace switch. See `vswitch::control::config` for the TOML file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vswitch::control::{handover, server, Config, Switch};

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
    /// Override: this node's name in the cluster IPAM (`ipam.node_name`); a DaemonSet passes
    /// the Kubernetes node name.
    #[arg(long)]
    node_name: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Take over from the vswitchd running with this state directory without losing traffic
    /// (same configuration): its ports' queues are handed over, then it exits. With none
    /// running, a plain start.
    #[arg(long)]
    upgrade: bool,
    /// After handing over to an upgrade, release everything and wait for SIGTERM instead of
    /// exiting (in a DaemonSet, an exit would restart the container, which would take over
    /// again).
    #[arg(long)]
    idle_after_handover: bool,
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
    if let (Some(name), Some(ipam)) = (args.node_name, config.ipam.as_mut()) {
        ipam.node_name = Some(name);
    }
    if let Err(e) = config.validate() {
        eprintln!("vswitchd: {e}");
        return ExitCode::from(2);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(config, args.upgrade)) {
        Ok(Stopped::Signalled) => ExitCode::SUCCESS,
        Ok(Stopped::HandedOver(lock)) => {
            // Sockets and listeners close with the runtime, before the lock is released: the new
            // instance binds the metrics address once it holds the lock.
            drop(runtime);
            drop(lock);
            if args.idle_after_handover {
                tracing::info!("handed over; idle until terminated");
                let mut signals = nix::sys::signal::SigSet::empty();
                signals.add(nix::sys::signal::Signal::SIGTERM);
                signals.add(nix::sys::signal::Signal::SIGINT);
                let _ = signals.thread_block();
                let _ = signals.wait();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Takes `STATE_DIR/vswitchd.lock` for the life of the process, before anything else is touched:
/// a second vswitchd on the node would take over the API socket and open extra queues on every
/// pod's TAP. Refused with the running one's pid instead.
fn lock_node(config: &Config) -> Result<NodeLock, String> {
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

type NodeLock = nix::fcntl::Flock<std::fs::File>;

/// The lock an upgraded instance releases by exiting; waits up to the handover's timeout.
async fn take_lock_after_handover(config: &Config) -> Result<NodeLock, String> {
    let deadline = std::time::Instant::now() + handover::CONFIRM_TIMEOUT;
    loop {
        match lock_node(config) {
            Ok(lock) => return Ok(lock),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(format!("the old vswitchd did not exit: {e}"))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// How the daemon starts: holding the node lock, or taking over from the instance that holds it
/// (which answers on this stream).
enum Start {
    Plain(NodeLock),
    TakeOver(std::os::unix::net::UnixStream),
}

/// How the daemon stopped.
enum Stopped {
    Signalled,
    /// An upgrade took over; the node lock is released by dropping it.
    HandedOver(NodeLock),
}

async fn run(config: Config, upgrade: bool) -> Result<Stopped, Box<dyn std::error::Error>> {
    let upgrade_socket = handover::socket_path(&config.state_dir);
    // An upgrade asks the running instance for its ports first; with none running it is a plain
    // start, which must hold the node lock before touching anything.
    let taken = if upgrade {
        let path = upgrade_socket.clone();
        tokio::task::spawn_blocking(move || handover::request(&path)).await??
    } else {
        None
    };
    let (handed, start) = match taken {
        Some((handover, old)) => (Some(handover), Start::TakeOver(old)),
        None => (None, Start::Plain(lock_node(&config)?)),
    };
    let socket = config.socket.clone();
    let metrics_addr = config.metrics_addr.clone();
    // Bound beside the path and moved over it once this instance works, so a failed upgrade
    // leaves the running instance reachable.
    let staging = socket.with_extension(format!("new-{}", std::process::id()));
    let api = server::bind_api(&staging).map_err(|e| format!("API socket {}: {e}", staging.display()))?;
    let started = Switch::start(config.clone(), handed).await;
    let (switch, slow_path) = match started {
        Ok(started) => started,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e.into());
        }
    };
    std::fs::rename(&staging, &socket).map_err(|e| format!("API socket {}: {e}", socket.display()))?;
    let api_path = server::OwnedPath::claim(&socket).map_err(|e| format!("API socket {}: {e}", socket.display()))?;
    tokio::spawn(server::serve_api(api, switch.clone()));
    tokio::spawn(server::serve_slow_path(slow_path, switch.clone()));
    tokio::spawn(server::serve_ipam(switch.clone()));
    let lock = match start {
        Start::Plain(lock) => lock,
        Start::TakeOver(old) => {
            handover::confirm(&old)?;
            tracing::info!("took over from the running vswitchd; waiting for it to exit");
            take_lock_after_handover(&config).await?
        }
    };
    if !metrics_addr.is_empty() {
        let listener = bind_metrics(&metrics_addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
        tokio::spawn(server::serve_metrics(listener, switch.clone()));
    }
    let (handed_over, mut taken_over) = tokio::sync::oneshot::channel();
    let upgrades = server::bind_api(&upgrade_socket).map_err(|e| format!("{}: {e}", upgrade_socket.display()))?;
    let upgrade_path =
        server::OwnedPath::claim(&upgrade_socket).map_err(|e| format!("{}: {e}", upgrade_socket.display()))?;
    tokio::spawn(server::serve_upgrades(upgrades, switch.clone(), handed_over));
    tracing::info!(socket = %socket.display(), "ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let replaced = tokio::select! {
        _ = tokio::signal::ctrl_c() => server::stop_after_handover(&switch, &mut taken_over).await,
        _ = term.recv() => server::stop_after_handover(&switch, &mut taken_over).await,
        _ = &mut taken_over => true,
    };
    switch.shutdown();
    if replaced {
        // The sockets' paths belong to the new instance now.
        tracing::info!("handed over to the upgrade");
        return Ok(Stopped::HandedOver(lock));
    }
    tracing::info!("stopping; pod TAPs persist for the next start");
    // Only if still ours: a failed or unconfirmed upgrade may have bound these paths already.
    api_path.remove_if_ours();
    upgrade_path.remove_if_ours();
    Ok(Stopped::Signalled)
}

/// Binds the metrics address; right after an upgrade the old instance may still be closing it.
async fn bind_metrics(addr: &str) -> Result<tokio::net::TcpListener, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => return Err(format!("metrics {addr}: {e}")),
        }
    }
}
