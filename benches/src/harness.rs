//! What every benchmark of the harness shares: common flags, the data directory, medians, and
//! where results go.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

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
                let date = Command::new("date").arg("+%Y-%m-%d").output()?;
                let date = String::from_utf8(date.stdout)?.trim().to_string();
                bench_dir().join("results").join(format!("{date}-{name}.json"))
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, json)?;
        Ok(path)
    }
}

/// The `strata` binary: `given`, else the one next to this executable.
pub fn strata_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let strata = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.parent().context("no exe dir")?.join("strata"),
    };
    anyhow::ensure!(
        strata.exists(),
        "{} not found: build it first (cargo build --release --bin strata)",
        strata.display()
    );
    Ok(strata)
}

/// Today's date, `YYYY-MM-DD` (local time).
pub fn today() -> anyhow::Result<String> {
    let out = Command::new("date").arg("+%Y-%m-%d").output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The current UTC time, `YYYY-MM-DD HH:MM:SS`.
pub fn now_utc() -> anyhow::Result<String> {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S"]).output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Writes back what the runs before left dirty and lets the file system trim what they deleted,
/// so that a latency run's `fdatasync`s do not carry the previous run's (or system's) disk work.
/// The data disk here is ext4 mounted with `discard`: blocks freed by deleting a run's directory
/// are trimmed when the journal next commits, which would otherwise be inside the next run's
/// first `fdatasync`.
pub fn settle_disk() {
    rustix::fs::sync();
}

/// The load average, as the report quotes it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

/// A release `strata serve` process on 127.0.0.1 port 0 with its own data directory.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub url: String,
    pid: u32,
}

impl Server {
    pub fn start(strata: &Path, data_dir: &Path) -> anyhow::Result<Server> {
        Self::start_with_env(strata, data_dir, &[])
    }

    /// Like [`Server::start`], with extra environment (`STRATA_*` config).
    pub fn start_with_env(strata: &Path, data_dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let mut child = Command::new(strata)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("STRATA_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", strata.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let addr =
            line.trim().strip_prefix("listening on ").with_context(|| format!("unexpected {line:?}"))?.to_string();
        let pid = child.id();
        Ok(Server { child, url: format!("http://{addr}"), pid })
    }

    /// User + system CPU seconds the server has used.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let fields: Vec<&str> = stat.rsplit_once(')').context("bad stat")?.1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("bad VmRSS")?.parse::<f64>()? / 1024.0)
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill").args(["-TERM", &self.pid.to_string()]).status()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median (upper middle for even counts).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `median unit (min–max)`.
pub fn show(v: &[f64], unit: &str) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!("{:.0} {unit} ({:.0}–{:.0})", s[s.len() / 2], s[0], s[s.len() - 1])
}

/// One measurement repeated: median and range.
#[derive(Debug, Clone)]
pub struct Stat {
    runs: Vec<f64>,
}

impl Stat {
    pub fn of(mut runs: Vec<f64>) -> Self {
        runs.sort_by(f64::total_cmp);
        Self { runs }
    }
    pub fn median(&self) -> f64 {
        self.runs[self.runs.len() / 2]
    }
    pub fn show(&self, unit: &str) -> String {
        let (lo, hi) = (self.runs[0], self.runs[self.runs.len() - 1]);
        format!("{:.1} {unit} ({:.1}–{:.1})", self.median(), lo, hi)
    }
    pub fn json(&self) -> String {
        format!(
            "{{\"median\":{:.3},\"runs\":[{}]}}",
            self.median(),
            self.runs.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(",")
        )
    }
}

/// The harness's package directory (`benches/`), where results and `RESULTS.md` go: the one named
/// by `CARGO_MANIFEST_DIR` in the environment (`cargo run` sets it, `benches/run.sh` too), else
/// the one this binary was built from. Checkouts that share a target directory share this binary,
/// and cargo does not rebuild one built in another checkout, whose path `env!` would have kept.
pub fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
