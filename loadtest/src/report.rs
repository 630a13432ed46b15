//! The report of a scenario: a table per run, a side-by-side comparison in A/B mode, JSON, and the
//! SVG plots, written to one directory.

use crate::harness::RunReport;
use crate::stats::PopulationSummary;
use serde::Serialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One scenario, one or two runs (A/B).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub runs: Vec<RunReport>,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn secs(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

fn population_row(p: &PopulationSummary) -> String {
    let d = &p.delivery_seconds;
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        p.name,
        if p.good { "yes" } else { "no" },
        p.connections_tried,
        p.connections_admitted,
        p.connections_deferred,
        p.connections_refused,
        p.connections_failed,
        pct(p.admission_ratio),
        p.messages_offered,
        p.messages_delivered,
        p.message_deferrals,
        p.messages_rejected + p.messages_abandoned,
        p.messages_undelivered,
        p.sessions_cut_off,
        if d.count > 0 { secs(d.p50) } else { "-".into() },
        if d.count > 0 { secs(d.p99) } else { "-".into() },
        if d.count > 0 { secs(d.max) } else { "-".into() },
    )
}

/// The table and figures of one run, as Markdown.
pub fn render_run(run: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {} against {} ({:.1} s)\n",
        run.scenario, run.target, run.seconds
    );
    let _ = writeln!(out, "| population | good | connections | admitted | deferred | refused | failed | admitted % | messages offered | delivered | 4xx | rejected | undelivered | cut off | delivery p50 s | p99 s | max s |");
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for p in &run.populations {
        let _ = writeln!(out, "{}", population_row(p));
    }
    let g = &run.good;
    let d = &run.good_delivery_seconds;
    let _ = writeln!(
        out,
        "\nGood mail: {} of connections admitted ({} of {}), {} of {} messages delivered ({}); time to delivery, retries included: p50 {} s, p99 {} s, max {} s.",
        pct(g.admission_ratio),
        g.connections_admitted,
        g.connections_tried,
        g.messages_delivered,
        g.messages_offered,
        pct(g.delivery_ratio),
        secs(d.p50),
        secs(d.p99),
        secs(d.max)
    );
    let checks: Vec<String> = run
        .populations
        .iter()
        .filter(|p| p.recipients_delivered > 0 || run.sink_recipients.contains_key(&p.name))
        .map(|p| {
            let arrived = run.sink_recipients.get(&p.name).copied().unwrap_or(0);
            format!(
                "{} {arrived} (senders were told {})",
                p.name, p.recipients_delivered
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "Recipients the sink received: {}.",
        if checks.is_empty() {
            "none".into()
        } else {
            checks.join(", ")
        }
    );
    if let Some(gate) = &run.gate {
        let m = &gate.metrics;
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("<= {v:.3} ms"));
        let capacity = m.occupancy.last().map_or(0.0, |s| s.capacity);
        let _ = writeln!(
            out,
            "mxgate: {} decisions, latency p50 {}, p99 {}; peak {} slots in use of {}; CPU {}; peak RSS {}.",
            m.decisions,
            ms(m.decision_ms_p50),
            ms(m.decision_ms_p99),
            m.peak_slots_in_use,
            capacity,
            match (gate.cpu_seconds, gate.cpu_ms_per_1000_messages) {
                (Some(s), Some(per)) => format!("{s:.2} s ({per:.0} ms per 1,000 messages delivered)"),
                (Some(s), None) => format!("{s:.2} s"),
                _ => "-".into(),
            },
            gate.peak_rss_kib.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        );
    }
    out
}

/// Both runs of an A/B report side by side, on the figures that matter.
pub fn render_comparison(a: &RunReport, b: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### A/B: {}\n", a.scenario);
    let _ = writeln!(out, "| | A: {} | B: {} |", a.target, b.target);
    let _ = writeln!(out, "| --- | ---: | ---: |");
    let row = |out: &mut String, name: &str, f: &dyn Fn(&RunReport) -> String| {
        let _ = writeln!(out, "| {name} | {} | {} |", f(a), f(b));
    };
    row(&mut out, "good connections admitted", &|r| {
        pct(r.good.admission_ratio)
    });
    row(&mut out, "good messages delivered", &|r| {
        format!(
            "{} of {}",
            r.good.messages_delivered, r.good.messages_offered
        )
    });
    row(
        &mut out,
        "good time to delivery p50 / p99 / max (s)",
        &|r| {
            let d = &r.good_delivery_seconds;
            format!("{} / {} / {}", secs(d.p50), secs(d.p99), secs(d.max))
        },
    );
    for (i, p) in a.populations.iter().enumerate() {
        let name = format!("{}: admitted % / delivered", p.name);
        row(&mut out, &name, &|r| {
            r.populations.get(i).map_or("-".into(), |p| {
                format!("{} / {}", pct(p.admission_ratio), p.messages_delivered)
            })
        });
    }
    row(&mut out, "peak slots in use", &|r| {
        r.gate
            .as_ref()
            .map_or("-".into(), |g| g.metrics.peak_slots_in_use.to_string())
    });
    out
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for run in &self.runs {
            out.push_str(&render_run(run));
            out.push('\n');
        }
        if let [a, b] = &self.runs[..] {
            out.push_str(&render_comparison(a, b));
        }
        out
    }

    /// Writes report.json, report.md and the plots (one pair per run) into `dir`; returns the files.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        files.push(json);
        let md = dir.join("report.md");
        std::fs::write(&md, self.render())?;
        files.push(md);
        for (i, run) in self.runs.iter().enumerate() {
            let suffix = match (self.runs.len(), i) {
                (1, _) => String::new(),
                (_, 0) => "-a".into(),
                _ => "-b".into(),
            };
            let occupancy = dir.join(format!("occupancy{suffix}.svg"));
            if run.gate.is_some() {
                crate::plot::occupancy(run, &occupancy)
                    .map_err(|e| anyhow::anyhow!("plot {}: {e}", occupancy.display()))?;
                files.push(occupancy);
            }
            let connections = dir.join(format!("connections{suffix}.svg"));
            crate::plot::connections(run, &connections)
                .map_err(|e| anyhow::anyhow!("plot {}: {e}", connections.display()))?;
            files.push(connections);
        }
        Ok(files)
    }
}

/// `mxgate-loadtest run`: the scenario against mxgate (and, with `compare`, against a second
/// policy or no gate), the report printed and written.
pub async fn run_scenario(
    path: &Path,
    policy: Option<PathBuf>,
    compare: Option<String>,
    out: Option<PathBuf>,
) -> anyhow::Result<Report> {
    use crate::harness::{self, Target};
    let scenario = crate::scenario::Scenario::load(path)?;
    let first = match (
        scenario.gate.attach,
        policy.or_else(|| scenario.policy_path()),
    ) {
        (Some(addr), _) => Target::Attach {
            addr,
            admin: scenario.gate.admin,
        },
        (None, policy) => Target::Mxgate { policy },
    };
    let mut targets = vec![first];
    match compare.as_deref() {
        None => {}
        Some("direct") => targets.push(Target::Direct),
        Some(other) => targets.push(Target::Mxgate {
            policy: Some(PathBuf::from(other)),
        }),
    }
    let mut runs = Vec::new();
    for target in &targets {
        runs.push(harness::run(&scenario, target).await?);
    }
    let report = Report {
        scenario: scenario.name.clone(),
        runs,
    };
    println!("{}", report.render());
    let dir = out.unwrap_or_else(|| PathBuf::from("target/loadtest").join(&scenario.name));
    for file in report.write(&dir)? {
        println!("wrote {}", file.display());
    }
    Ok(report)
}
