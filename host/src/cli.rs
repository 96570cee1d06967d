//! The command line: the clap definitions of `poolhost` and what its subcommands share (the
//! compile cache's arguments, `--output`), logging, and mapping outcomes to exit codes (0 every
//! task succeeded, 1 a task failed, 2 usage or host error) with errors printed on one line. Each
//! subcommand is a module of its own (`run`, `compile`, `inspect`) with its arguments and its
//! `execute`, after wasmtime's `src/commands`. A thin layer over the library: it never names
//! wasmtime.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use poolhost::{Cluster, CompileCache, DirGrant, Grants, Loader, Program};

/// Writes a line to stderr as `eprintln!` does, but a closed stderr is no reason to panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        // Formatted first, then written whole: stderr is unbuffered, and `writeln!` would write
        // each piece of the message with a system call of its own, interleaving with others'.
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

mod compile;
mod halt;
mod input;
mod inspect;
mod joblog;
mod output;
mod plan;
mod report;
mod run;
mod serve;
mod signals;
mod status;

/// Run WebAssembly tasks on a pool of sandboxed worker processes.
#[derive(Debug, Parser)]
#[command(name = "poolhost", version, about, max_term_width = 100)]
struct Cli {
    /// Log what the host does on stderr: -v worker starts and exits, compiles and the compile
    /// cache; -vv every task; -vvv everything. RUST_LOG, if set, overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run tasks of a component on a pool of worker processes.
    ///
    /// Each call runs in a fresh sandbox on one of N worker processes; at most N run at once and
    /// the rest wait for a free worker. Results are printed in the order the calls were given.
    /// A component that exports `wasi:cli/run` and is given no calls runs its `main` once.
    Run(Box<run::RunArgs>),
    /// Compile components into the compile cache ahead of time, and say where it is.
    ///
    /// `run` then loads them from the cache instead of compiling: its first run starts as fast
    /// as later ones.
    Compile(compile::CompileArgs),
    /// Show what a component exports (with WIT signatures) and imports, and how `run` treats
    /// it: as calls, jobs, or a driver.
    Inspect(inspect::InspectArgs),
    /// Join a pool shared by many machines through Redis, and run its tasks here.
    ///
    /// Takes tasks while it has free workers, runs each as `run` does (a fresh sandbox, the
    /// limits, crash recovery) and writes the results back. Its --dir, --dir-rw and --env are
    /// what its tasks may touch; its --timeout, --max-memory and --fuel cap what submitters ask
    /// for. SIGINT or SIGTERM: it takes nothing new and stops once its tasks are done; a second
    /// one stops it at once (its tasks then run again elsewhere).
    Serve(Box<serve::ServeArgs>),
    /// Show a cluster's pool: its hosts, its tasks and its queues.
    Status(status::StatusArgs),
    /// Serve as a worker process of a pool (started by the pool itself).
    #[command(hide = true)]
    Worker,
}

/// Where compiled components are kept.
#[derive(Debug, clap::Args)]
struct CacheArgs {
    /// The compile cache directory [default: $XDG_CACHE_HOME/poolhost or ~/.cache/poolhost].
    /// It must be private to this user.
    #[arg(long, value_name = "DIR", env = "POOLHOST_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile without reading or filling the compile cache (whatever --cache-dir or
    /// POOLHOST_CACHE_DIR say).
    #[arg(long)]
    no_cache: bool,
}

impl CacheArgs {
    /// The cache directory the arguments and environment name, if any.
    fn dir(&self) -> Option<PathBuf> {
        let home_cache = || {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        };
        self.cache_dir
            .clone()
            .or_else(|| home_cache().map(|dir| dir.join("poolhost")))
    }

    /// A loader with the compile cache. A cache directory the user named (`--cache-dir`,
    /// `POOLHOST_CACHE_DIR`) that cannot serve is an error; the default one is only a warning,
    /// and the component is compiled as if there were no cache.
    fn loader(&self, metered: bool) -> anyhow::Result<Loader> {
        let loader = Program::loader().metered(metered);
        if self.no_cache {
            return Ok(loader);
        }
        Ok(match self.dir().map(CompileCache::open) {
            Some(Ok(cache)) => loader.cache(cache),
            Some(Err(e)) if self.cache_dir.is_some() => return Err(e.into()),
            Some(Err(e)) => {
                tracing::warn!("{e}; compiling without it");
                loader
            }
            None => loader,
        })
    }
}

/// What tasks may reach outside their sandbox: `run`'s grants, or a host's (`serve`).
#[derive(Debug, clap::Args)]
struct GrantArgs {
    /// Let tasks read host directory HOST, seen as GUEST (default: the same path). Tasks reach no
    /// files unless granted.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    dirs: Vec<(PathBuf, String)>,

    /// As --dir, and let tasks create, change and delete what is in it.
    #[arg(long = "dir-rw", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    dirs_rw: Vec<(PathBuf, String)>,

    /// Give tasks environment variable NAME with VALUE, or with its value here if no VALUE is
    /// given. Tasks see no environment unless granted.
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = parse_env)]
    env: Vec<String>,
}

impl GrantArgs {
    /// Whether anything is granted.
    fn any(&self) -> bool {
        !(self.dirs.is_empty() && self.dirs_rw.is_empty() && self.env.is_empty())
    }

    fn grants(&self) -> Grants {
        let dir = |writable: bool| {
            move |(host, guest): &(PathBuf, String)| DirGrant {
                host: host.clone(),
                guest: guest.clone(),
                writable,
            }
        };
        let mut dirs: Vec<DirGrant> = self.dirs.iter().map(dir(false)).collect();
        dirs.extend(self.dirs_rw.iter().map(dir(true)));
        let env = self
            .env
            .iter()
            .filter_map(|spec| match spec.split_once('=') {
                Some((name, value)) => Some((name.to_owned(), value.to_owned())),
                // `--env NAME` passes the variable on if this process has it, as `wasmtime run` does.
                None => std::env::var(spec).ok().map(|value| (spec.clone(), value)),
            })
            .collect();
        Grants { dirs, env }
    }
}

fn parse_env(text: &str) -> Result<String, String> {
    let name = text.split_once('=').map_or(text, |(name, _)| name);
    if name.is_empty() {
        return Err("expected NAME or NAME=VALUE, with a NAME".into());
    }
    if name.contains('\0') {
        return Err("a NAME has no NUL byte".into());
    }
    Ok(text.to_owned())
}

fn parse_dir(text: &str) -> Result<(PathBuf, String), String> {
    let (host, guest) = text.split_once("::").unwrap_or((text, text));
    if host.is_empty() || guest.is_empty() {
        return Err("expected HOST or HOST::GUEST".into());
    }
    Ok((PathBuf::from(host), guest.to_owned()))
}

/// Which cluster pool: the Redis server and the pool's name.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Share a pool with other machines through the Redis (or Valkey) server at URL:
    /// redis://[:PASSWORD@]HOST[:PORT][/DB].
    #[arg(long, value_name = "URL", env = "POOLHOST_REDIS", hide_env_values = true)]
    redis: Option<String>,

    /// The cluster's pool to use.
    #[arg(
        long = "pool",
        value_name = "NAME",
        default_value = "default",
        requires = "redis"
    )]
    pool: String,
}

impl ClusterArgs {
    /// The cluster the arguments name, if any.
    fn cluster(&self) -> anyhow::Result<Option<Cluster>> {
        match &self.redis {
            Some(url) => Ok(Some(Cluster::open(url, &self.pool)?)),
            None => Ok(None),
        }
    }
}

/// How `run` and `inspect` print what they have to say: for people, or for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            say!(
                "poolhost: {} (see `poolhost --help`)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => args.execute(),
        Command::Compile(args) => args.execute(),
        Command::Inspect(args) => args.execute(),
        Command::Serve(args) => args.execute(),
        Command::Status(args) => args.execute(),
        Command::Worker => poolhost::worker::run().map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        say!("poolhost: {}", one_line(&format!("{e:#}")));
        ExitCode::from(2)
    })
}

/// A refusal as the one line it must be: an error from deeper down that spans lines (a
/// runtime's message with its context, say) has its lines joined.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join(" ")
}

/// Sends the host's `tracing` events to stderr: warnings only by default, more with each `-v`,
/// or what RUST_LOG asks for. Workers inherit RUST_LOG, so it reaches their events too.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "warn,poolhost=info",
        2 => "warn,poolhost=debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        // Its own complaint about a closed stderr would panic; there is nobody to tell.
        .log_internal_errors(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
