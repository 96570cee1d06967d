//! `poolhost compile`: compiles components into the compile cache ahead of time, and says where
//! each one is.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use poolhost::{CompileCache, Program};

use super::CacheArgs;

/// The arguments of `poolhost compile`.
#[derive(Debug, clap::Args)]
// Compiling into the cache without the cache means nothing: the flag the shared cache arguments
// bring is kept out of this command's help, and refused.
#[command(mut_arg("no_cache", |arg| arg.hide(true)))]
pub struct CompileArgs {
    /// The components (`.wasm` or `.wat`).
    #[arg(value_name = "TASK", required = true)]
    tasks: Vec<PathBuf>,

    /// Compile for runs with --fuel, which need metered code.
    #[arg(long)]
    metered: bool,

    #[command(flatten)]
    cache: CacheArgs,
}

impl CompileArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if self.cache.no_cache {
            bail!("--no-cache is for `run` and `inspect`: `compile` compiles into the compile cache");
        }
        let dir = self
            .cache
            .dir()
            .context("no cache directory: give --cache-dir, or set POOLHOST_CACHE_DIR or HOME")?;
        let cache = CompileCache::open(dir)?;
        let loader = Program::loader().metered(self.metered).cache(cache);
        for task in &self.tasks {
            let program = loader.load(task)?;
            let cached = program.cached().with_context(|| {
                format!(
                    "`{}` was compiled but could not be stored in the cache (see the warning above)",
                    task.display()
                )
            })?;
            let what = if cached.hit {
                "already in the cache"
            } else {
                "compiled into the cache"
            };
            println!("{}: {what}: {}", task.display(), cached.path.display());
        }
        Ok(ExitCode::SUCCESS)
    }
}
