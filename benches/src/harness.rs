//! What every benchmark of the harness shares: common flags, the data directory, medians, and
//! where results go.

use std::path::{Path, PathBuf};

/// Flags every benchmark takes.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Short runs: checks the harness works (no meaningful numbers).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each measurement; the median is reported with the range.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where to put data (default: a temporary directory under the current one, on its disk).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where to write the JSON results (default: benches/results/<date>-<benchmark>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl RunArgs {
    /// Repetitions: 1 with `--quick`.
    pub fn runs(&self) -> usize {
        if self.quick { 1 } else { self.runs.max(1) }
    }

    /// A fresh temporary data directory, removed when dropped.
    pub fn data_root(&self) -> anyhow::Result<tempfile::TempDir> {
        Ok(match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                tempfile::tempdir_in(d)?
            }
            None => tempfile::tempdir_in(".")?,
        })
    }

    /// Writes the JSON document of benchmark `name` and returns where it went.
    pub fn write_results(&self, name: &str, json: &str) -> anyhow::Result<PathBuf> {
        let path = match &self.out {
            Some(p) => p.clone(),
            None => {
                let date = std::process::Command::new("date").arg("+%Y-%m-%d").output()?;
                let date = String::from_utf8(date.stdout)?.trim().to_string();
                Path::new(env!("CARGO_MANIFEST_DIR")).join("results").join(format!("{date}-{name}.json"))
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, json)?;
        Ok(path)
    }
}

/// The load average, as the report quotes it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}
