//! `poolhost inspect`: what a component exports (with WIT signatures) and imports, how
//! `poolhost run` treats it, or why it cannot run it, as text for people or JSON for programs.
//! A component is read, not compiled: the answer comes in milliseconds, and nothing is written
//! to the compile cache.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use poolhost::Description;

use super::OutputFormat;

/// The arguments of `poolhost inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The component (`.wasm` or `.wat`).
    #[arg(value_name = "TASK")]
    task: PathBuf,

    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

impl InspectArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let description = Description::read(&self.task)?;
        let kinds = kinds(&description);
        let mut out = io::stdout().lock();
        match self.output {
            OutputFormat::Json => {
                let json = serde_json::json!({
                    "task": self.task,
                    "component": description.component,
                    "kinds": kinds,
                    "main": description.main,
                    "exports": description.exports,
                    "imports": description.imports,
                    "unrunnable": description.unrunnable,
                });
                writeln!(out, "{json}")?;
            }
            OutputFormat::Text => print_text(&mut out, &self.task, &description, &kinds)?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// How `poolhost run` can run the component: `calls`, `jobs` or `driver`; none if it cannot.
fn kinds(description: &Description) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    if description.unrunnable.is_some() {
        return kinds;
    }
    if !description.exports.is_empty() {
        kinds.push("calls");
    }
    if description.is_driver() {
        kinds.push("driver");
    } else if description.main {
        kinds.push("jobs");
    }
    kinds
}

/// The description for people: what the component is, how `run` treats it, its exports and its
/// imports.
fn print_text(
    out: &mut impl Write,
    task: &Path,
    description: &Description,
    kinds: &[&str],
) -> io::Result<()> {
    let what = match description.component {
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
    match &description.unrunnable {
        Some(reason) => writeln!(out, "  it cannot run it: {reason}")?,
        None if kinds.is_empty() => writeln!(
            out,
            "  nothing: it exports no function a task can call, and no `main`"
        )?,
        None => {}
    }
    writeln!(out, "\nexports:")?;
    match (description.main, description.component) {
        (true, true) => writeln!(out, "  main (wasi:cli/run)")?,
        (true, false) => writeln!(out, "  main (_start)")?,
        (false, _) => {}
    }
    for export in &description.exports {
        writeln!(out, "  {export}")?;
    }
    writeln!(out, "\nimports:")?;
    for import in &description.imports {
        writeln!(out, "  {import}")?;
    }
    Ok(())
}
