//! `strata schema register|get|list|check|config` and the decoding behind `strata consume
//! --decode`: the registry's REST API over HTTP (blocking `ureq`, run off the async workers).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::AvroSchema;

#[derive(Subcommand, Debug)]
pub enum SchemaAction {
    /// Register a schema (an Avro `.avsc` file, `-` for stdin) under a subject.
    Register { subject: String, file: String },
    /// Print a schema: a subject's version (default latest), or `--id`.
    Get {
        /// The subject (omit with `--id`).
        subject: Option<String>,
        #[arg(long, default_value = "latest")]
        version: String,
        /// A global schema id instead of a subject's version.
        #[arg(long)]
        id: Option<u32>,
    },
    /// List subjects, or a subject's versions.
    List {
        subject: Option<String>,
        /// Include soft-deleted subjects or versions.
        #[arg(long)]
        deleted: bool,
    },
    /// Check a schema file against a subject under its compatibility mode (all the versions the
    /// mode names, or `--version`); exits non-zero with one line per problem when incompatible.
    Check {
        subject: String,
        file: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Print the compatibility mode (global, or a subject's); `--set` changes it.
    Config {
        subject: Option<String>,
        /// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or FULL_TRANSITIVE.
        #[arg(long)]
        set: Option<String>,
    },
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// One call to the registry API: the JSON reply, or its error message.
fn call(server: &str, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let url = format!("{}/registry{path}", server.trim_end_matches('/'));
    let body = body.map(serde_json::to_vec).transpose()?.unwrap_or_default();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(&url)
        .header("content-type", super::CONTENT_TYPE)
        .body(body)?;
    let mut response = agent().run(request).with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.body_mut().read_to_string()?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{url} answered {status}: {text}"))?;
    if !status.is_success() {
        let message = value["message"].as_str().unwrap_or(&text);
        bail!("{message} (error {})", value["error_code"]);
    }
    Ok(value)
}

fn read_schema(file: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    }
    Ok(text)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_schema(text: &str) -> anyhow::Result<()> {
    let value: Value = serde_json::from_str(text)?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// Runs a `strata schema` command (blocking: call it from `spawn_blocking`).
///
/// # Errors
/// The registry's error message, or why it could not be reached.
pub fn run(server: &str, action: SchemaAction) -> anyhow::Result<()> {
    match action {
        SchemaAction::Register { subject, file } => {
            let schema = read_schema(&file)?;
            let r = call(
                server,
                "POST",
                &format!("/subjects/{}/versions", enc(&subject)),
                Some(&json!({"schema": schema})),
            )?;
            println!("registered {subject} version {} (schema id {})", r["version"], r["id"]);
        }
        SchemaAction::Get { subject, version, id } => match (subject, id) {
            (_, Some(id)) => {
                let r = call(server, "GET", &format!("/schemas/ids/{id}"), None)?;
                print_schema(r["schema"].as_str().unwrap_or("null"))?;
            }
            (Some(subject), None) => {
                let r = call(server, "GET", &format!("/subjects/{}/versions/{}", enc(&subject), enc(&version)), None)?;
                eprintln!("{subject} version {} (schema id {})", r["version"], r["id"]);
                print_schema(r["schema"].as_str().unwrap_or("null"))?;
            }
            (None, None) => bail!("give a subject or --id"),
        },
        SchemaAction::List { subject, deleted } => {
            let path = match &subject {
                Some(s) => format!("/subjects/{}/versions?deleted={deleted}", enc(s)),
                None => format!("/subjects?deleted={deleted}"),
            };
            for item in call(server, "GET", &path, None)?.as_array().into_iter().flatten() {
                match item {
                    Value::String(s) => println!("{s}"),
                    other => println!("{other}"),
                }
            }
        }
        SchemaAction::Check { subject, file, version } => {
            let schema = read_schema(&file)?;
            let path = match version {
                Some(v) => format!("/compatibility/subjects/{}/versions/{}?verbose=true", enc(&subject), enc(&v)),
                None => format!("/compatibility/subjects/{}/versions?verbose=true", enc(&subject)),
            };
            let r = call(server, "POST", &path, Some(&json!({"schema": schema})))?;
            if r["is_compatible"] == Value::Bool(true) {
                println!("compatible");
            } else {
                let messages: Vec<String> = r["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                    .collect();
                // One line, as every CLI error (the reasons may be several).
                bail!("incompatible with {subject}: {}", messages.join("; ").replace('\n', " "));
            }
        }
        SchemaAction::Config { subject, set } => {
            let path = match &subject {
                Some(s) => format!("/config/{}", enc(s)),
                None => "/config".to_string(),
            };
            let level = match set {
                Some(level) => {
                    call(server, "PUT", &path, Some(&json!({"compatibility": level.to_uppercase()})))?["compatibility"]
                        .clone()
                }
                None => {
                    let path = if subject.is_some() { format!("{path}?defaultToGlobal=true") } else { path };
                    call(server, "GET", &path, None)?["compatibilityLevel"].clone()
                }
            };
            println!("{}", level.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// Decodes framed Avro values for `strata consume --decode`, fetching each schema id once.
#[derive(Debug)]
pub struct ValueDecoder {
    server: String,
    schemas: HashMap<u32, Option<Arc<AvroSchema>>>,
}

impl ValueDecoder {
    pub fn new(server: &str) -> Self {
        Self { server: server.to_string(), schemas: HashMap::new() }
    }

    /// The value as JSON, or `None` when it is not a framed value of a known schema.
    pub fn decode(&mut self, value: &[u8]) -> Option<Value> {
        let (id, body) = super::avro::unframe(value)?;
        let server = self.server.clone();
        let schema = self
            .schemas
            .entry(id)
            .or_insert_with(|| {
                // A CLI on a multi-threaded runtime: blocking here holds up nothing else.
                let fetched = tokio::task::block_in_place(|| call(&server, "GET", &format!("/schemas/ids/{id}"), None));
                match fetched {
                    Ok(r) => r["schema"].as_str().and_then(|s| AvroSchema::parse(s).ok()).map(Arc::new),
                    Err(e) => {
                        eprintln!("strata: warning: schema id {id}: {e}");
                        None
                    }
                }
            })
            .clone()?;
        schema.decode(body).ok()
    }
}
