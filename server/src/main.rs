//! `strata`: the server (`strata serve`) and the command-line client (`strata topic|produce|consume`).

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use strata_server::config::{FlagOverrides, ServerConfig};

/// mimalloc rather than glibc's malloc: the produce and fetch paths allocate and free buffers of
/// a few hundred KiB to a few MiB per request, which glibc serves from fresh `mmap`s that the
/// kernel must fault in and zero (page faults, `clear_page` and `munmap` were about a tenth of the
/// server's CPU in a relaxed W2 run).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "strata", version, about = "Strata: event streaming in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP + gRPC on one port).
    Serve {
        /// TOML config file; `STRATA_*` environment variables and flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (default ./strata-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address for HTTP and gRPC (default 127.0.0.1:7070).
        #[arg(long)]
        listen: Option<String>,
        /// Also serve HTTP and gRPC on this Unix socket, for clients on this host (`unix:PATH`).
        #[arg(long)]
        unix_socket: Option<PathBuf>,
        /// This node's id (default 1).
        #[arg(long)]
        node_id: Option<u64>,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve { config, data_dir, listen, unix_socket, node_id } => {
            runtime.block_on(serve(config, FlagOverrides { listen, unix_socket, data_dir, node_id }))
        }
        Command::Client(command) => runtime.block_on(cli::run(command)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config_file: Option<PathBuf>, flags: FlagOverrides) -> anyhow::Result<()> {
    let config = ServerConfig::load(config_file.as_deref(), &flags).map_err(anyhow::Error::msg)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    raise_open_files_limit(config.max_open_files);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    // One machine-readable line on stdout, so scripts and tests started on port 0 learn the port.
    println!("listening on {}", listener.local_addr()?);
    strata_server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Descriptors the server needs besides its cache of segment files: client connections, index
/// and metadata files, the Raft log.
const OTHER_FILES: u64 = 1024;

/// Raises the soft limit on open files to the hard one, as servers that hold many files and
/// sockets do (Go's runtime does it for every program). The usual soft default, 1024, is no more
/// than `max_open_files` alone takes by default, so a busy server would fail with "too many open
/// files" long before the hard limit.
fn raise_open_files_limit(max_open_files: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // The kernel refuses a soft limit above `fs.nr_open` (1,048,576 by default), even when the
    // hard limit is unlimited.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
    let limit = getrlimit(Resource::Nofile);
    let ceiling = [limit.maximum, nr_open].into_iter().flatten().min().unwrap_or(1 << 20);
    let mut soft = limit.current.unwrap_or(u64::MAX);
    if soft < ceiling {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(ceiling), maximum: limit.maximum }) {
            Ok(()) => {
                tracing::info!(from = soft, to = ceiling, "raised the open files limit");
                soft = ceiling;
            }
            Err(e) => tracing::warn!(error = %e, limit = soft, "cannot raise the open files limit"),
        }
    }
    let needed = max_open_files as u64 + OTHER_FILES;
    if soft < needed {
        tracing::warn!(
            limit = soft,
            needed,
            "the open files limit is below max_open_files + {OTHER_FILES}: lower max_open_files or raise the hard limit \
             (ulimit -Hn, LimitNOFILE= in a systemd unit)"
        );
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
