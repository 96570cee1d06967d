//! `poolhost status`: a cluster's pool at a glance, for people or as JSON.

use std::io::Write;
use std::process::ExitCode;

use super::{ClusterArgs, OutputFormat};

/// The arguments of `poolhost status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// How to print it: `text` or `json`.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl StatusArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let Some(cluster) = self.cluster.cluster()? else {
            anyhow::bail!("status needs a Redis server: --redis URL or POOLHOST_REDIS");
        };
        let status = cluster.status()?;
        let mut out = std::io::stdout().lock();
        match self.output {
            OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(&status)?)?,
            OutputFormat::Text => {
                writeln!(out, "pool `{}`", status.pool)?;
                let alive = status.hosts.iter().filter(|host| host.alive).count();
                writeln!(out, "hosts: {alive} alive of {} seen", status.hosts.len())?;
                for host in &status.hosts {
                    match (host.alive, host.workers, host.running) {
                        (true, Some(workers), Some(running)) => writeln!(
                            out,
                            "  {}  alive  {workers} workers  {running} tasks held",
                            host.id
                        )?,
                        _ => writeln!(
                            out,
                            "  {}  gone   last seen {:.1} s ago",
                            host.id,
                            host.seen_ms_ago as f64 / 1000.0
                        )?,
                    }
                }
                writeln!(
                    out,
                    "tasks: {} waiting, {} running, {} done, {} failed, {} set aside",
                    status.waiting, status.running, status.done, status.failed, status.dead
                )?;
                match status.queues.is_empty() {
                    true => writeln!(out, "queues: none")?,
                    false => {
                        writeln!(out, "queues:")?;
                        for (name, length) in &status.queues {
                            writeln!(out, "  {name}  {length} items")?;
                        }
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
