//! moto's S3-compatible server on 127.0.0.1, for tiered-storage tests against a real S3 API.
//! `./scripts/setup-test-tools` installs it; `./scripts/test` sets `STRATA_MOTO_SERVER`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `moto_server` with one bucket.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
}

fn moto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("STRATA_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let default =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/strata-test-venv/bin/moto_server");
    assert!(
        default.exists(),
        "moto_server not found: run ./scripts/setup-test-tools (./scripts/test does) or set STRATA_MOTO_SERVER"
    );
    default
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Moto {
    /// Starts moto on a free port and creates `bucket`.
    pub fn start(bucket: &str) -> Moto {
        let port = free_port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}"), bucket: bucket.to_string() };
        for _ in 0..200 {
            if ureq::get(&moto.endpoint).call().is_ok() {
                let created = ureq::put(&format!("{}/{bucket}", moto.endpoint)).send_empty();
                assert!(created.is_ok(), "creating bucket {bucket}: {created:?}");
                return moto;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moto_server at {} never answered", moto.endpoint);
    }

    /// The server's environment for this store.
    pub fn server_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STRATA_OBJECT_STORE", "s3".into()),
            ("STRATA_S3_BUCKET", self.bucket.clone()),
            ("STRATA_S3_ENDPOINT", self.endpoint.clone()),
            ("STRATA_S3_PATH_STYLE", "true".into()),
            ("STRATA_S3_REGION", "us-east-1".into()),
            ("STRATA_S3_ACCESS_KEY_ID", "testing".into()),
            ("STRATA_S3_SECRET_ACCESS_KEY", "testing".into()),
            ("STRATA_OBJECT_STORE_TIMEOUT_MS", "1000".into()),
            ("STRATA_TIER_INTERVAL_MS", "200".into()),
        ]
    }

    /// Stops answering (SIGSTOP): requests hang until they time out.
    pub fn pause(&self) {
        Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status().unwrap();
    }

    /// Answers again (SIGCONT), with everything it stored.
    pub fn resume(&self) {
        Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status().unwrap();
    }

    /// Keys in the bucket under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let url = format!("{}/{}?list-type=2&prefix={prefix}", self.endpoint, self.bucket);
        let xml = ureq::get(&url).call().unwrap().into_body().read_to_string().unwrap();
        let mut keys: Vec<String> = xml
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect();
        keys.sort();
        keys
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        ureq::get(&format!("{}/{}/{key}", self.endpoint, self.bucket))
            .call()
            .unwrap()
            .into_body()
            .read_to_vec()
            .unwrap()
    }

    pub fn put(&self, key: &str, bytes: &[u8]) {
        ureq::put(&format!("{}/{}/{key}", self.endpoint, self.bucket)).send(bytes).unwrap();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
