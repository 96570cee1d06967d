//! `poolhost serve`: a host joins a cluster's pool and runs its tasks until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use poolhost::{Serve, ServeStop, TaskOptions};

use super::run::{parse_timeout, parse_workers};
use super::signals::{self, Interrupt};
use super::{CacheArgs, ClusterArgs, GrantArgs};

/// The arguments of `poolhost serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Worker processes per component, at most 256 [default: the number of CPUs]. The host
    /// holds one task per worker.
    #[arg(short = 'n', long = "workers", value_name = "N", value_parser = parse_workers)]
    pub workers: Option<usize>,

    #[command(flatten)]
    pub grants: GrantArgs,

    /// The longest a task may run here, whatever its submitter asks (and the timeout of tasks
    /// that ask for none).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// The most linear memory a task may have here, e.g. 64MiB.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<ByteSize>,

    /// The most fuel a task may use here; tasks then all run with fuel metering.
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,

    /// How often the host says it is alive and renews its tasks.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_timeout)]
    pub heartbeat: Duration,

    /// How long a task may go unrenewed before another host takes it over: how long the tasks of
    /// a host that died wait. At least four heartbeats.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    pub visibility: Duration,

    /// How many times a task may be taken by hosts that die before it is set aside as failed
    /// (`host-died`).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_attempts: u32,

    #[command(flatten)]
    pub cache: CacheArgs,
}

impl ServeArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let Some(cluster) = self.cluster.cluster()? else {
            anyhow::bail!("serve needs a Redis server: --redis URL or POOLHOST_REDIS");
        };
        let cluster = cluster
            .heartbeat(self.heartbeat)
            .visibility(self.visibility)
            .max_attempts(self.max_attempts);
        let limits = TaskOptions {
            timeout: self.timeout,
            max_memory: self.max_memory.map(|size| size.as_u64()),
            fuel: self.fuel,
            retries: 0,
        };
        let serve = Serve::new(cluster.clone())
            .workers(self.workers.unwrap_or(0))
            .grants(self.grants.grants())
            .limits(limits)
            .loader(self.cache.loader(self.fuel.is_some())?);
        let stop = Arc::new(ServeStop::default());
        let interrupt = Interrupt::watch().context("cannot watch for SIGINT and SIGTERM")?;
        let stopping = stop.clone();
        interrupt.hand_over(Some(Box::new(move || stopping.drain())));
        // The server is reached before the host says it serves.
        cluster.status()?;
        say!("poolhost: host {} serves pool `{}`", serve.id(), cluster.name());
        let completed = serve.run(&stop)?;
        let how = interrupt
            .caught()
            .map_or_else(String::new, |signal| format!(" after {}", signals::name(signal)));
        say!("poolhost: host stopped{how}; it completed {completed} tasks");
        Ok(ExitCode::SUCCESS)
    }
}
