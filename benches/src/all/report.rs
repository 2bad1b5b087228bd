//! What `strata-bench all` reports: rows of repeated measurements (median and range, failed runs
//! kept apart with their reason), the JSON document (benches/schema/results.schema.json), the
//! markdown tables and the latency-vs-throughput SVG.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::peers::group::Delivery;

/// One run's figures; `None` where a figure does not apply.
#[derive(Debug, Clone, Default)]
pub struct Measure {
    pub msgs_s: f64,
    pub mb_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub cpu_s_per_gb: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// A measurement repeated `runs` times for one workload, system, mode and phase.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub system: String,
    pub mode: String,
    /// `produce`, `consume`, `latency@10%`, ...
    pub phase: String,
    pub ok: Vec<Measure>,
    /// Reasons of the runs that failed (not averaged in).
    pub failed: Vec<String>,
    pub note: String,
    /// What the exactly-once check of the ok runs established (W4's group, W8's catch-up).
    pub delivery: Option<Delivery>,
}

fn median_of(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

impl Row {
    pub fn new(workload: &str, system: &str, mode: &str, phase: &str) -> Row {
        Row {
            workload: workload.into(),
            system: system.into(),
            mode: mode.into(),
            phase: phase.into(),
            ok: Vec::new(),
            failed: Vec::new(),
            note: String::new(),
            delivery: None,
        }
    }

    pub fn status(&self) -> &'static str {
        if !self.failed.is_empty() {
            "failed"
        } else if self.ok.is_empty() {
            "skipped"
        } else {
            "ok"
        }
    }

    fn field(&self, f: impl Fn(&Measure) -> Option<f64>) -> Option<f64> {
        median_of(self.ok.iter().filter_map(f).collect())
    }

    pub fn msgs_s(&self) -> Option<f64> {
        self.field(|m| Some(m.msgs_s))
    }
    pub fn mb_s(&self) -> Option<f64> {
        self.field(|m| Some(m.mb_s))
    }
    pub fn p50(&self) -> Option<f64> {
        self.field(|m| m.p50_ms)
    }
    pub fn p99(&self) -> Option<f64> {
        self.field(|m| m.p99_ms)
    }

    /// The median only when every run succeeded: a failed row has no figure to compare.
    pub fn clean_msgs_s(&self) -> Option<f64> {
        if self.status() == "ok" { self.msgs_s() } else { None }
    }

    fn range(&self, f: impl Fn(&Measure) -> f64) -> Option<(f64, f64)> {
        let v: Vec<f64> = self.ok.iter().map(f).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (!v.is_empty()).then_some((lo, hi))
    }

    pub(crate) fn json(&self) -> Value {
        let measure = |m: &Measure| {
            json!({
                "msgs_s": m.msgs_s, "mb_s": m.mb_s, "p50_ms": m.p50_ms, "p99_ms": m.p99_ms,
                "p999_ms": m.p999_ms, "cpu_s_per_gb": m.cpu_s_per_gb, "peak_rss_mib": m.peak_rss_mib,
            })
        };
        let median = json!({
            "msgs_s": self.msgs_s(), "mb_s": self.mb_s(), "p50_ms": self.p50(), "p99_ms": self.p99(),
            "p999_ms": self.field(|m| m.p999_ms), "cpu_s_per_gb": self.field(|m| m.cpu_s_per_gb),
            "peak_rss_mib": self.field(|m| m.peak_rss_mib),
        });
        let mut row = json!({
            "workload": self.workload, "system": self.system, "mode": self.mode, "phase": self.phase,
            "status": self.status(), "failures": self.failed, "note": self.note,
            "runs": self.ok.iter().map(measure).collect::<Vec<_>>(), "median": median,
        });
        if let Some(d) = &self.delivery {
            row["delivery"] = json!({
                "records": d.records, "partitions": d.partitions, "exactly_once": d.exactly_once, "how": d.how,
            });
        }
        row
    }
}

/// A limit of the machine measured in the same run.
#[derive(Debug, Clone)]
pub struct Limit {
    pub name: String,
    pub unit: String,
    pub runs: Vec<f64>,
}

impl Limit {
    pub fn median(&self) -> Option<f64> {
        median_of(self.runs.clone())
    }
}

/// Strata's figure over another's, for the same workload, mode and phase.
#[derive(Debug, Clone)]
pub struct Ratio {
    pub workload: String,
    pub mode: String,
    pub metric: String,
    pub versus: String,
    pub strata: f64,
    pub other: f64,
}

impl Ratio {
    pub fn ratio(&self) -> f64 {
        self.strata / self.other.max(1e-12)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "workload": self.workload, "mode": self.mode, "metric": self.metric, "versus": self.versus,
            "strata": self.strata, "other": self.other, "ratio": self.ratio(),
        })
    }
}

/// Everything one `all` run produced.
#[derive(Debug, Default)]
pub struct Report {
    pub started: String,
    pub date: String,
    pub loadavg: String,
    pub machine: Value,
    pub quick: bool,
    pub runs: usize,
    pub command: String,
    pub peers: Vec<(String, String, String)>,
    pub limits: Vec<Limit>,
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
    pub seconds_total: f64,
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn fmt_msgs(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Two decimals, or two significant digits below 0.1 (a cold read against a raw read is far
/// below 1 and would show as 0.00).
fn fmt_ratio(v: f64) -> String {
    if v >= 0.1 || v == 0.0 {
        format!("{v:.2}")
    } else {
        let decimals = (1 - v.log10().floor() as i32).clamp(2, 6) as usize;
        format!("{v:.decimals$}")
    }
}

impl Report {
    pub fn json(&self) -> Value {
        json!({
            "schema": "strata-bench-all/1",
            "date": self.date,
            "started": self.started,
            "loadavg": self.loadavg,
            "machine": self.machine,
            "quick": self.quick,
            "runs": self.runs,
            "command": self.command,
            "seconds_total": self.seconds_total,
            "peers": self.peers.iter().map(|(n, s, v)| json!({"name": n, "status": s, "version": v})).collect::<Vec<_>>(),
            "limits": self.limits.iter().map(|l| json!({"name": l.name, "unit": l.unit, "runs": l.runs, "median": l.median()})).collect::<Vec<_>>(),
            "results": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "ratios": self.ratios.iter().map(Ratio::json).collect::<Vec<_>>(),
        })
    }

    /// The markdown tables: peers, limits, every row, ratios.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| system | status | version |\n| --- | --- | --- |");
        for (n, st, v) in &self.peers {
            let _ = writeln!(s, "| {n} | {st} | {v} |");
        }
        let _ = writeln!(s, "\n| limit (same run) | median | runs |\n| --- | --- | --- |");
        for l in &self.limits {
            let runs: Vec<String> = l.runs.iter().map(|r| fmt_num(Some(*r))).collect();
            let _ = writeln!(s, "| {} | {} {} | {} |", l.name, fmt_num(l.median()), l.unit, runs.join(", "));
        }
        let _ = writeln!(
            s,
            "\n| workload | mode | phase | system | msgs/s (range) | MB/s | p50 ms | p99 ms | server CPU s/GB | peak RSS MiB | status |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in &self.rows {
            let range = r
                .range(|m| m.msgs_s)
                .map(|(lo, hi)| format!(" ({}–{})", fmt_msgs(lo), fmt_msgs(hi)))
                .unwrap_or_default();
            let status = match r.status() {
                "failed" => format!(
                    "**failed** ({} of {}): {}",
                    r.failed.len(),
                    r.failed.len() + r.ok.len(),
                    r.failed.join("; ")
                ),
                st => st.to_string(),
            };
            let status = if r.note.is_empty() { status } else { format!("{status}; {}", r.note) };
            let status = match &r.delivery {
                Some(d) if d.exactly_once && r.status() == "ok" => {
                    format!("{status}; exactly once: {} records ({})", d.records, d.how)
                }
                _ => status,
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {}{range} | {} | {} | {} | {} | {} | {} |",
                r.workload,
                r.mode,
                r.phase,
                r.system,
                r.msgs_s().map(fmt_msgs).unwrap_or_else(|| "—".into()),
                fmt_num(r.mb_s()),
                fmt_num(r.p50()),
                fmt_num(r.p99()),
                fmt_num(r.field(|m| m.cpu_s_per_gb)),
                fmt_num(r.field(|m| m.peak_rss_mib)),
                status.replace('|', "/"),
            );
        }
        let _ = writeln!(
            s,
            "\n| workload | mode | metric | Strata | versus | ratio |\n| --- | --- | --- | --- | --- | --- |"
        );
        for r in &self.ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} {} | **{}×** |",
                r.workload,
                r.mode,
                r.metric,
                fmt_num(Some(r.strata)),
                r.versus,
                fmt_num(Some(r.other)),
                fmt_ratio(r.ratio())
            );
        }
        s
    }

    /// p99 latency against achieved throughput, one line per system: the W3 open-loop points
    /// and the W2 durable closed-loop peak. Hand-written SVG, log-scale latency axis.
    pub fn svg(&self) -> String {
        let systems = ["strata", "redis", "nats"];
        let colours = ["#d62728", "#1f77b4", "#2ca02c"];
        let points: Vec<(usize, f64, f64)> = self
            .rows
            .iter()
            .filter(|r| r.workload == "W3" || (r.workload == "W2" && r.mode == "durable" && r.phase == "produce"))
            .filter_map(|r| {
                let s = systems.iter().position(|s| *s == r.system)?;
                Some((s, r.mb_s()?, r.p99()?.max(0.01)))
            })
            .collect();
        let (w, h, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 30.0, 150.0);
        let max_x = points.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
        let (min_y, max_y) = (
            points.iter().map(|p| p.2).fold(f64::INFINITY, f64::min).min(0.1).log10().floor(),
            points.iter().map(|p| p.2).fold(1.0f64, f64::max).log10().ceil().max(1.0),
        );
        let x = |v: f64| left + (w - left - right) * v / max_x;
        let y = |v: f64| h - bottom - (h - bottom - top) * (v.log10() - min_y) / (max_y - min_y).max(1e-9);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">"
        );
        let _ = writeln!(s, "<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>");
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">p99 produce latency vs throughput, durable (W3 open loop at 10/50/80 % + W2 peak), {}</text>",
            w / 2.0,
            self.date
        );
        let (x0, y0, x1, y1) = (left, h - bottom, w - right, top);
        let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"black\"/>");
        let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"black\"/>");
        for i in 0..=5 {
            let v = max_x * i as f64 / 5.0;
            let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.0}</text>", x(v), y0 + 16.0);
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">MB/s acknowledged</text>",
            (x0 + x1) / 2.0,
            h - 12.0
        );
        let mut e = min_y as i32;
        while e <= max_y as i32 {
            let v = 10f64.powi(e);
            let _ =
                writeln!(s, "<line x1=\"{x0}\" y1=\"{:.1}\" x2=\"{x1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>", y(v), y(v));
            let _ =
                writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v} ms</text>", x0 - 6.0, y(v) + 4.0);
            e += 1;
        }
        for (i, name) in systems.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = points.iter().filter(|p| p.0 == i).map(|p| (p.1, p.2)).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.is_empty() {
                continue;
            }
            let path: Vec<String> = pts.iter().map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b))).collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                colours[i],
                path.join(" ")
            );
            for (a, b) in &pts {
                let _ =
                    writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\"/>", x(*a), y(*b), colours[i]);
            }
            let ly = top + 20.0 + 20.0 * i as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{}\"/>",
                x1 + 15.0,
                ly - 4.0,
                colours[i]
            );
            let _ = writeln!(s, "<text x=\"{}\" y=\"{}\">{name}</text>", x1 + 35.0, ly);
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The JSON Schema subset benches/schema/results.schema.json uses (`$ref`, `type`, `enum`,
/// `minimum`, `required`, `properties`, `additionalProperties: false`, `items`), applied to a
/// document: the first violation, with its path.
pub fn validate(doc: &Value, schema: &Value) -> Result<(), String> {
    check(doc, schema, schema, "$")
}

fn check(v: &Value, s: &Value, root: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        let def = root.get("$defs").and_then(|d| d.get(name)).ok_or(format!("{at}: no $def {name}"))?;
        return check(v, def, root, at);
    }
    if let Some(types) = s.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_u64() || v.is_i64(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not {types:?}"));
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        return Err(format!("{at}: {v} not in {options:?}"));
    }
    if let Some(min) = s.get("minimum").and_then(Value::as_f64)
        && v.as_f64().is_some_and(|x| x < min)
    {
        return Err(format!("{at}: {v} < {min}"));
    }
    if let Some(obj) = v.as_object() {
        for req in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            let key = req.as_str().unwrap_or("");
            if !obj.contains_key(key) {
                return Err(format!("{at}: missing {key}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, child) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(child, ps, root, &format!("{at}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: unexpected property {k}"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(item, items, root, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Rules of a results document the schema cannot say: a row's status agrees with its runs and
/// failures (failed runs are never averaged in), and every ok row of a workload that checks
/// delivery (W4's group consume, W8's cold catch-up) says every record arrived exactly once.
pub fn check_rules(doc: &Value) -> Result<(), String> {
    let rows = doc.get("results").and_then(Value::as_array).ok_or("$.results: missing")?;
    for (i, row) in rows.iter().enumerate() {
        let at = format!("$.results[{i}] ({} {} {})", row["workload"], row["system"], row["phase"]);
        let runs = row["runs"].as_array().map_or(0, Vec::len);
        let failures = row["failures"].as_array().map_or(0, Vec::len);
        match row["status"].as_str() {
            Some("ok") if runs == 0 || failures > 0 => {
                return Err(format!("{at}: ok with {runs} runs and {failures} failures"));
            }
            Some("failed") if failures == 0 => return Err(format!("{at}: failed without a reason")),
            Some("skipped") if runs > 0 || failures > 0 => {
                return Err(format!("{at}: skipped with {runs} runs and {failures} failures"));
            }
            _ => {}
        }
        let checks_delivery = matches!(
            (row["workload"].as_str(), row["phase"].as_str()),
            (Some("W4"), Some("group consume")) | (Some("W8"), Some("consume"))
        );
        if checks_delivery && row["status"] == "ok" {
            let d = &row["delivery"];
            if d["exactly_once"] != Value::Bool(true) || d["records"].as_u64().unwrap_or(0) == 0 {
                return Err(format!("{at}: an ok row without an exactly-once delivery check: {d}"));
            }
        }
    }
    Ok(())
}

/// The results schema, as built into the harness.
pub const RESULTS_SCHEMA: &str = include_str!("../../schema/results.schema.json");

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        serde_json::from_str(RESULTS_SCHEMA).unwrap()
    }

    fn sample() -> Report {
        let mut ok = Row::new("W1", "strata", "durable", "produce");
        ok.ok.push(Measure { msgs_s: 1e6, mb_s: 100.0, p50_ms: Some(1.0), p99_ms: Some(2.0), ..Default::default() });
        let mut failed = Row::new("W1", "nats", "durable", "produce");
        failed.failed.push("server process exited: signal 9".into());
        Report {
            date: "2026-11-26".into(),
            runs: 1,
            quick: true,
            machine: json!({"cpus": 2}),
            peers: vec![("redis".into(), "missing".into(), "not installed".into())],
            limits: vec![Limit { name: "loopback TCP".into(), unit: "MB/s".into(), runs: vec![3000.0] }],
            rows: vec![ok, failed],
            ratios: vec![Ratio {
                workload: "W1".into(),
                mode: "durable".into(),
                metric: "msgs/s".into(),
                versus: "redis".into(),
                strata: 2.0,
                other: 1.0,
            }],
            ..Report::default()
        }
    }

    #[test]
    fn report_validates_against_schema() {
        let doc = sample().json();
        validate(&doc, &schema()).unwrap();
    }

    #[test]
    fn schema_rejects_a_bad_status() {
        let mut doc = sample().json();
        doc["results"][0]["status"] = json!("fine");
        assert!(validate(&doc, &schema()).is_err());
        let mut doc = sample().json();
        doc.as_object_mut().unwrap().remove("results");
        assert!(validate(&doc, &schema()).is_err());
    }

    /// Any results file the harness wrote (benches/results/*-all*.json) validates too.
    #[test]
    fn written_results_validate() {
        let dir = crate::harness::bench_dir().join("results");
        let schema = schema();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.contains("-all") && name.ends_with(".json") {
                let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                validate(&doc, &schema).unwrap_or_else(|e| panic!("{name}: {e}"));
                check_rules(&doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn rules_require_an_exactly_once_check_on_group_rows() {
        let mut r = sample();
        let mut group = Row::new("W4", "strata", "relaxed", "group consume");
        group.ok.push(Measure { msgs_s: 1e6, mb_s: 100.0, ..Default::default() });
        r.rows.push(group);
        let doc = r.json();
        validate(&doc, &schema()).unwrap();
        assert!(check_rules(&doc).unwrap_err().contains("exactly-once"));
        r.rows[2].delivery =
            Some(Delivery { records: 20_000, partitions: 4, exactly_once: true, how: "offsets dense".into() });
        let doc = r.json();
        validate(&doc, &schema()).unwrap();
        check_rules(&doc).unwrap();
        assert!(r.markdown().contains("exactly once: 20000 records"));
        // A failed row with no reason, or an ok row that hides a failure, breaks the rules.
        let mut doc = r.json();
        doc["results"][1]["failures"] = json!([]);
        assert!(check_rules(&doc).unwrap_err().contains("without a reason"));
        let mut doc = r.json();
        doc["results"][0]["failures"] = json!(["lost acks"]);
        assert!(check_rules(&doc).is_err());
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(fmt_ratio(7.564), "7.56");
        assert_eq!(fmt_ratio(0.13), "0.13");
        assert_eq!(fmt_ratio(0.0123), "0.012");
        assert_eq!(fmt_ratio(0.00196), "0.0020");
    }

    #[test]
    fn failed_rows_give_no_figure_to_compare() {
        let r = sample();
        assert_eq!(r.rows[1].status(), "failed");
        assert_eq!(r.rows[1].clean_msgs_s(), None);
        assert_eq!(r.rows[0].clean_msgs_s(), Some(1e6));
        assert!(r.markdown().contains("**failed**"));
        assert!(r.svg().starts_with("<svg"));
    }
}
