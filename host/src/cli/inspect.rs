//! `poolhost inspect`: what a component exports (with WIT signatures) and imports, and how
//! `poolhost run` treats it, as text for people or JSON for programs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use poolhost::Program;

use super::{CacheArgs, OutputFormat};

/// The arguments of `poolhost inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The component (`.wasm` or `.wat`).
    #[arg(value_name = "TASK")]
    task: PathBuf,

    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,

    #[command(flatten)]
    cache: CacheArgs,
}

impl InspectArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let program = self.cache.loader(false)?.load(&self.task)?;
        let kinds = kinds(&program);
        let mut out = io::stdout().lock();
        match self.output {
            OutputFormat::Json => {
                let json = serde_json::json!({
                    "task": self.task,
                    "component": program.is_component(),
                    "kinds": kinds,
                    "main": program.has_main(),
                    "exports": program.exports(),
                    "imports": program.imports(),
                });
                writeln!(out, "{json}")?;
            }
            OutputFormat::Text => print_text(&mut out, &self.task, &program, &kinds)?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// How `poolhost run` can run the component: `calls`, `jobs` or `driver`.
fn kinds(program: &Program) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    if !program.exports().is_empty() {
        kinds.push("calls");
    }
    if program.is_driver() {
        kinds.push("driver");
    } else if program.has_main() {
        kinds.push("jobs");
    }
    kinds
}

/// The description for people: what the component is, how `run` treats it, its exports and its
/// imports.
fn print_text(out: &mut impl Write, task: &Path, program: &Program, kinds: &[&str]) -> io::Result<()> {
    let what = match program.is_component() {
        true => "a WebAssembly component",
        false => "a core WebAssembly module (WASI preview 1)",
    };
    writeln!(out, "{}: {what}", task.display())?;
    writeln!(out, "\nhow `poolhost run` treats it:")?;
    for kind in kinds {
        let how = match *kind {
            "calls" => "calls: call its exports with --invoke 'f(1, \"a\")' or --calls FILE",
            "driver" => {
                "driver: with no calls, its `main` runs on the host and drives a pool of its own tasks"
            }
            _ => {
                "jobs: with no calls its `main` runs once (arguments after --), or once per line with --each"
            }
        };
        writeln!(out, "  {how}")?;
    }
    if kinds.is_empty() {
        writeln!(
            out,
            "  nothing: it exports no function a task can call, and no `main`"
        )?;
    }
    writeln!(out, "\nexports:")?;
    match (program.has_main(), program.is_component()) {
        (true, true) => writeln!(out, "  main (wasi:cli/run)")?,
        (true, false) => writeln!(out, "  main (_start)")?,
        (false, _) => {}
    }
    for export in program.exports() {
        writeln!(out, "  {export}")?;
    }
    writeln!(out, "\nimports:")?;
    for import in program.imports() {
        writeln!(out, "  {import}")?;
    }
    Ok(())
}
