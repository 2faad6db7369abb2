//! vpc-bench: measurements that need the real system (root, namespaces, real plugins), printed
//! side by side with their baselines from the same run.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vpc-bench", about = "End-to-end benchmarks of vswitchd and vpc-cni against their baselines")]
struct Cli {
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// ADD and DEL latency of vpc-cni next to the reference bridge + host-local plugins.
    Cni {
        #[arg(long, default_value_t = 200)]
        pods: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    assert!(nix::unistd::geteuid().is_root(), "vpc-bench needs root (network namespaces)");
    match cli.command {
        Bench::Cni { pods } => {
            let r = benches::cni_latency::run(pods);
            if cli.json {
                let l = |l: benches::cni_latency::Latency| serde_json::json!({"p50_ms": l.p50_ms, "p99_ms": l.p99_ms});
                println!("{}", serde_json::json!({
                    "pods": r.pods,
                    "vpc_cni": {"add": l(r.ours_add), "del": l(r.ours_del)},
                    "bridge_host_local": {"add": l(r.reference_add), "del": l(r.reference_del)},
                }));
            } else {
                println!("CNI latency over {} pods (ms)", r.pods);
                println!("{:<24} {:>9} {:>9} {:>9} {:>9}", "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99");
                for (name, add, del) in [("vpc-cni", r.ours_add, r.ours_del), ("bridge + host-local", r.reference_add, r.reference_del)] {
                    println!("{:<24} {:>9.2} {:>9.2} {:>9.2} {:>9.2}", name, add.p50_ms, add.p99_ms, del.p50_ms, del.p99_ms);
                }
                println!(
                    "vpc-cni / reference: ADD p50 {:.2}x, DEL p50 {:.2}x",
                    r.ours_add.p50_ms / r.reference_add.p50_ms,
                    r.ours_del.p50_ms / r.reference_del.p50_ms
                );
            }
        }
    }
}
