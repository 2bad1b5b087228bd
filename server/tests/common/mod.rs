//! Starts real `strata serve` processes on 127.0.0.1 port 0 for black-box tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod s3;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// A running server process.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `strata serve` on a free port with `data_dir`, and waits until it is ready.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with_env(data_dir, &[])
    }

    /// Like [`Server::start`], with extra environment (e.g. `STRATA_*` config).
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("STRATA_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("strata starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let server = Server { child, url: format!("http://{addr}"), data_dir: data_dir.to_path_buf() };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if agent().get(format!("{}/readyz", self.url)).call().is_ok_and(|r| r.status().is_success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server at {} never became ready", self.url);
    }

    /// Waits for the process to exit on its own (e.g. a crash hook), at most `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server at {} did not exit", self.url);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP response, whatever its status.
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.unwrap();
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (content_type, retry_after) = (header("content-type").unwrap_or_default(), header("retry-after"));
    Reply {
        status: r.status().as_u16(),
        content_type,
        retry_after,
        body: r.body_mut().with_config().limit(256 << 20).read_to_vec().unwrap(),
    }
}

pub fn get(url: &str) -> Reply {
    reply(agent().get(url).call())
}

pub fn post_json(url: &str, body: &Value) -> Reply {
    reply(agent().post(url).header("content-type", "application/json").send(serde_json::to_vec(body).unwrap()))
}

pub fn request(method: &str, url: &str, body: &Value) -> Reply {
    let agent = agent();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .unwrap();
    reply(agent.run(req))
}

/// POST that reports connection failures instead of panicking (the server may be killed).
pub fn try_post(url: &str, json_body: &[u8]) -> Result<Reply, ureq::Error> {
    Ok(reply(Ok(agent().post(url).header("content-type", "application/json").send(json_body)?)))
}

/// Like [`post_raw`], reporting connection failures instead of panicking.
pub fn try_post_with_headers(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply, ureq::Error> {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(reply(Ok(req.send(body)?)))
}

pub fn post_raw(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.send(body))
}

pub fn create_topic(url: &str, name: &str, partitions: u32, config: Value) -> Value {
    let r = post_json(&format!("{url}/v1/topics"), &json!({"name": name, "partitions": partitions, "config": config}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

pub fn produce(url: &str, topic: &str, body: Value) -> Value {
    let r = post_json(&format!("{url}/v1/topics/{topic}/records"), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

pub fn fetch(url: &str, topic: &str, partition: u32, query: &str) -> Value {
    let r = get(&format!("{url}/v1/topics/{topic}/partitions/{partition}/records?{query}"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// All records of a partition, following next_offset.
pub fn fetch_all(url: &str, topic: &str, partition: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let page = fetch(url, topic, partition, &format!("offset={offset}&max_records=1000"));
        let records = page["records"].as_array().unwrap().clone();
        if records.is_empty() {
            return out;
        }
        offset = page["next_offset"].as_u64().unwrap();
        out.extend(records);
    }
}

/// A file of this package (`server/`), by its path from the package's directory. The directory is
/// the one `cargo test` runs from (`CARGO_MANIFEST_DIR` in the environment), not the one compiled
/// in: checkouts that share a target directory share test binaries too, and cargo does not
/// rebuild one built in another checkout, whose path `env!` would have kept.
pub fn package_file(path: &str) -> PathBuf {
    let dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    dir.join(path)
}

/// The test venv's python (`scripts/setup-test-tools` installs moto, confluent-kafka, avro and
/// duckdb there): `STRATA_TEST_PYTHON`, else `bin/python` of `STRATA_TEST_VENV` or
/// `~/.cache/strata-test-venv`.
pub fn test_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("STRATA_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = match std::env::var("STRATA_TEST_VENV") {
        Ok(v) => PathBuf::from(v),
        Err(_) => PathBuf::from(std::env::var("HOME").ok()?).join(".cache/strata-test-venv"),
    };
    let p = venv.join("bin/python");
    p.exists().then_some(p)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
