//! `manifest-scale`: how reading, validating, building the graph and planning grow with
//! the number of units.
//!
//! Each size runs in a child process of this binary, so that its peak memory (the
//! kernel's `VmHWM`) belongs to that size alone. The child generates the manifest text
//! in memory first, untimed, then resets the peak to the current footprint (writing 5
//! to `/proc/self/clear_refs`), so the "work" figures cover parsing, validation, the
//! graph and the plan and not the generator.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use regatta_coordinator::{Dag, Manifest, Plan};
use serde::{Deserialize, Serialize};

use crate::generate::{self, Format, Spec};

/// One size's figures, as the child reports them to the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub format: String,
    pub units: usize,
    pub dependencies: usize,
    pub levels: usize,
    pub text_bytes: usize,
    pub parse_seconds: f64,
    pub dag_seconds: f64,
    pub plan_seconds: f64,
    /// Resident memory before parsing (the process plus the manifest text), in KiB.
    pub baseline_kib: u64,
    /// Peak resident memory of the whole process, in KiB.
    pub peak_kib: u64,
    /// Resident memory with the manifest, graph and plan alive, in KiB.
    pub retained_kib: u64,
    /// Whether the peak was reset after generating the text; if not, `peak_kib` may be
    /// the generator's and the work figures are lower bounds.
    pub peak_reset: bool,
}

impl Measurement {
    fn total_seconds(&self) -> f64 {
        self.parse_seconds + self.dag_seconds + self.plan_seconds
    }

    fn work_peak_kib(&self) -> u64 {
        self.peak_kib.saturating_sub(self.baseline_kib)
    }
}

/// Generates one manifest, then times and measures each stage in this process.
pub fn measure(spec: &Spec) -> anyhow::Result<Measurement> {
    let text = generate::manifest_text(spec);
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let baseline_kib = status_kib("VmRSS")?;
    let name = format!("bench.{}", spec.format.extension());

    let started = Instant::now();
    let manifest = Manifest::parse(&text, &name, &std::env::temp_dir())
        .map_err(|errors| anyhow::anyhow!("generated manifest refused:\n{errors}"))?;
    let parse_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let dag = Dag::build(&manifest).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let dag_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let plan = Plan::of(&manifest, &dag);
    let plan_seconds = started.elapsed().as_secs_f64();

    let measurement = Measurement {
        format: spec.format.extension().to_owned(),
        units: manifest.units.len(),
        dependencies: plan.dependencies,
        levels: plan.levels.len(),
        text_bytes: text.len(),
        parse_seconds,
        dag_seconds,
        plan_seconds,
        baseline_kib,
        peak_kib: status_kib("VmHWM")?,
        retained_kib: status_kib("VmRSS")?.saturating_sub(baseline_kib),
        peak_reset,
    };
    // Keep everything alive until measured.
    drop((plan, dag, manifest, text));
    Ok(measurement)
}

/// Reads a memory figure (in KiB) from `/proc/self/status`.
fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (Linux only)")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

/// What `manifest-scale` runs.
pub struct ScalePlan {
    pub sizes: Vec<usize>,
    pub formats: Vec<Format>,
    pub fan_in: usize,
    pub resources: usize,
    pub seed: u64,
}

/// Runs each size and format in a child process and returns the figures.
pub fn run(plan: &ScalePlan) -> anyhow::Result<Vec<Measurement>> {
    let exe = std::env::current_exe().context("locating regatta-bench")?;
    let mut measurements = Vec::new();
    for format in &plan.formats {
        for units in &plan.sizes {
            eprintln!("measuring {units} units ({})...", format.extension());
            let output = Command::new(&exe)
                .arg("measure")
                .args(["--units", &units.to_string()])
                .args(["--fan-in", &plan.fan_in.to_string()])
                .args(["--resources", &plan.resources.to_string()])
                .args(["--format", format.extension()])
                .args(["--seed", &plan.seed.to_string()])
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !output.status.success() {
                bail!(
                    "measuring {units} units failed ({}):\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let measurement: Measurement = serde_json::from_slice(&output.stdout)
                .context("reading the child's measurement")?;
            measurements.push(measurement);
        }
    }
    Ok(measurements)
}

/// Renders the figures as a table, with a line on the 1,000,000-unit target.
pub fn render(measurements: &[Measurement], fan_in: usize, resources: usize) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = format!(
        "manifest-scale: fan-in up to {fan_in}, {resources} resources, ~5% of units touching \
         shared files; {} cores\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    out.push_str(&format!(
        "{:<6} {:>9} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
        "format",
        "units",
        "deps",
        "text MB",
        "parse+val",
        "dag",
        "plan",
        "total",
        "peak MB",
        "work MB",
        "work B/u",
        "kept B/u"
    ));
    for m in measurements {
        out.push_str(&format!(
            "{:<6} {:>9} {:>9} {:>8.1} {:>9.2}s {:>7.2}s {:>7.2}s {:>7.2}s {:>9.0} {:>9.0} {:>9.0} {:>9.0}\n",
            m.format,
            m.units,
            m.dependencies,
            m.text_bytes as f64 / 1e6,
            m.parse_seconds,
            m.dag_seconds,
            m.plan_seconds,
            m.total_seconds(),
            mib(m.peak_kib),
            mib(m.work_peak_kib()),
            m.work_peak_kib() as f64 * 1024.0 / m.units.max(1) as f64,
            m.retained_kib as f64 * 1024.0 / m.units.max(1) as f64,
        ));
    }
    out.push_str(
        "\npeak MB: the process's VmHWM (includes the manifest text); work MB: peak minus the \
         footprint\nbefore parsing; work B/u: that per unit; kept B/u: memory still held by \
         manifest + DAG + plan, per unit.\n",
    );
    if measurements.iter().any(|m| !m.peak_reset) {
        out.push_str(
            "note: the peak could not be reset after generating the text; work figures are \
             lower bounds.\n",
        );
    }
    for m in measurements.iter().filter(|m| m.units >= 1_000_000) {
        let verdict = if m.total_seconds() < 10.0 {
            "met"
        } else {
            "missed"
        };
        out.push_str(&format!(
            "target (1,000,000 units validated and planned in < 10 s), {}: {verdict} ({:.2} s)\n",
            m.format,
            m.total_seconds()
        ));
    }
    out
}

/// Writes a generated manifest to a file, or to stdout when `out` is `None`.
pub fn write_generated(spec: &Spec, out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            generate::write_manifest(spec, &mut writer)?;
            std::io::Write::flush(&mut writer)?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut writer = std::io::BufWriter::new(stdout.lock());
            generate::write_manifest(spec, &mut writer)?;
            std::io::Write::flush(&mut writer)?;
        }
    }
    Ok(())
}
