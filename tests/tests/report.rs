//! `regatta report` against a real fleet: the files it writes and what a
//! reader finds in them.

use std::path::Path;
use std::time::Duration;

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::{binary, write_file, Fleet};

#[tokio::test(flavor = "multi_thread")]
async fn a_report_clusters_one_cause_and_writes_html_markdown_and_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Two units fail the same way (another table each), one succeeds.
    let yaml = "batch: reported\nretries: 0\nplaybook:\n  name: migrate\n  run: 'if [ -n \"$TABLE\" ]; then echo \"error: table $TABLE is locked by pid $$\" >&2; exit 3; fi'\n\
                units:\n  - {id: ok}\n  - {id: orders, env: {TABLE: orders}}\n  - {id: customers, env: {TABLE: customers}}\n";
    write_file(dir.path(), "manifest.yaml", yaml);
    let manifest_path = dir.path().join("manifest.yaml");
    let m = Manifest::load(&manifest_path).expect("valid manifest");
    let fleet = Fleet::start("report", 1, 3, "30s").await;
    let batch = fleet.client().enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Failed);

    let out = dir.path().join("report");
    let output = tokio::process::Command::new(binary("regatta"))
        .args(["report", &batch, "--out"])
        .arg(&out)
        .arg("--manifest")
        .arg(&manifest_path)
        .env("REGATTA_API", &fleet.api)
        .env_remove("REGATTA_API_TOKEN")
        .output()
        .await
        .expect("run regatta report");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    for name in ["report.html", "report.md", "report.json"] {
        assert!(
            printed.contains(name),
            "it prints where {name} is: {printed}"
        );
        assert!(out.join(name).is_file());
    }
    let report: serde_json::Value =
        serde_json::from_slice(&read(&out, "report.json")).expect("json");
    let clusters = report["clusters"].as_array().expect("clusters");
    assert_eq!(clusters.len(), 1, "one cause: {clusters:#?}");
    let units = clusters[0]["units"].as_array().expect("units");
    assert_eq!(units.len(), 2);
    let template = clusters[0]["template"].as_str().unwrap_or_default();
    assert!(template.contains("is locked by pid <n>"), "{template}");
    assert_eq!(
        report["timeline"]["critical_path"]["planned"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let html = String::from_utf8(read(&out, "report.html")).expect("utf-8");
    assert!(html.contains("<svg") && html.contains(clusters[0]["id"].as_str().unwrap_or("?")));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing is fetched when it is opened"
    );
    let md = String::from_utf8(read(&out, "report.md")).expect("utf-8");
    assert!(md.contains("## Failure clusters") && md.contains("needs_review"));
    fleet.stop().await;
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("report file")
}
