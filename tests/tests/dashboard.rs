//! The dashboard at `/ui` in a real browser: Debian's headless Chromium,
//! driven through chromedriver's WebDriver API, against a real coordinator
//! and workers. Chromium is installed (`scripts/services.sh chromium`) when
//! missing; a machine where that fails fails the test, saying how to install
//! it. A screenshot of the batch page is kept under the temp dir's test logs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regatta_coordinator::client::ApiClient;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::UnitState;
use regatta_tests::{write_file, Fleet, KilledOnDrop};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium and chromedriver, installed first if they are missing.
fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    let installed = std::process::Command::new(&script).arg("chromium").status();
    assert!(
        matches!(installed, Ok(status) if status.success())
            && Path::new(CHROMIUM).exists()
            && Path::new(CHROMEDRIVER).exists(),
        "the dashboard test needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}), \
         and installing them failed ({installed:?}): run `scripts/services.sh chromium` \
         or `apt-get install chromium chromium-driver` as root"
    );
}

/// A headless Chromium session through chromedriver's HTTP API.
struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _driver: KilledOnDrop,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        ensure_chromium();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = KilledOnDrop(driver);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a profile folder");
        // As root Chromium needs --no-sandbox; the networking flags keep it
        // from calling out of this closed machine.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("create a browser session")
            .json()
            .await
            .expect("the new session's answer");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver started no session: {created}"));
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            _driver: driver,
            _profile: profile,
        }
    }

    /// One WebDriver command; its `value`, or the error it answered.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
        let url = format!("{}{path}", self.session);
        let request = self.http.request(method.clone(), &url);
        let request = if method == reqwest::Method::GET {
            request
        } else {
            request.json(&body)
        };
        let response = request.send().await.expect("chromedriver answers");
        let ok = response.status().is_success();
        let answer: Value = response.json().await.expect("a JSON answer");
        let value = answer["value"].clone();
        if ok {
            Ok(value)
        } else {
            Err(value)
        }
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs a script in the page (its body, `arguments` given) and returns its value.
    async fn run(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
        .unwrap_or_else(|e| panic!("script {script:?} failed: {e}"))
    }

    /// Waits until `script` returns something truthy, and returns it.
    async fn wait_for(&self, what: &str, script: &str, args: Value, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.run(script, args.clone()).await;
            if !matches!(value, Value::Null | Value::Bool(false)) && value != json!("") {
                return value;
            }
            if Instant::now() > deadline {
                let text = self.run("return document.body.innerText", json!([])).await;
                panic!("{what}: not within {timeout:?}; the page shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element reference")
            .to_owned()
    }

    /// Clicks the element `css` finds. The page redraws what changed every
    /// second, so an element found just before a redraw is looked up again.
    async fn click(&self, css: &str) {
        for _ in 0..3 {
            let element = self.element(css).await;
            let clicked = self
                .command(
                    reqwest::Method::POST,
                    &format!("/element/{element}/click"),
                    json!({}),
                )
                .await;
            match clicked {
                Ok(_) => return,
                Err(e) if e["error"] == json!("stale element reference") => continue,
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("click {css}: the element went stale three times");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The text of the open `confirm()` dialog, once one is open.
    async fn dialog_text(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Value::String(text)) = self
                .command(reqwest::Method::GET, "/alert/text", Value::Null)
                .await
            {
                return text;
            }
            assert!(Instant::now() < deadline, "no confirmation was asked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn accept_dialog(&self) {
        self.command(reqwest::Method::POST, "/alert/accept", json!({}))
            .await
            .unwrap_or_else(|e| panic!("accept the dialog: {e}"));
    }

    async fn screenshot(&self, path: &Path) {
        let png = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let bytes = decode_base64(png.as_str().expect("base64 text"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("the test logs folder");
        }
        std::fs::write(path, bytes).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium with its session; chromedriver is killed after.
        let url = self.session.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        reqwest::Client::new().delete(&url).send(),
                    )
                    .await;
                });
            }
        })
        .join();
    }
}

/// Standard base64 (WebDriver's screenshots), without a crate for it.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        let keep = chunk.len().saturating_sub(1);
        bytes.extend_from_slice(&n.to_be_bytes()[1..1 + keep]);
    }
    bytes
}

/// Prints where the screenshot is when the test fails, and only then.
struct Artifact(PathBuf);

impl Drop for Artifact {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("screenshot of the batch page: {}", self.0.display());
        }
    }
}

fn artifact_path(namespace: &str, name: &str) -> Artifact {
    Artifact(
        std::env::temp_dir()
            .join("regatta-test-logs")
            .join(format!("{namespace}-{name}.png")),
    )
}

/// Twenty slow units, so progress moves over several seconds, and one unit
/// that fails until `fixed` exists (no automatic retry: it needs review).
fn live_manifest(dir: &Path, fixed: &Path) -> Manifest {
    let mut yaml = format!(
        "batch: dashboard\nconcurrency: 2\nretries: 0\nplaybook:\n  name: p\n  run: 'sleep 1'\nunits:\n  \
         - id: flaky\n    priority: 10\n    run: 'test -f {} || {{ echo \"flaky: the fix is not in yet\"; exit 3; }}'\n",
        fixed.display()
    );
    for i in 0..20 {
        yaml.push_str(&format!("  - id: slow-{i}\n"));
    }
    write_file(dir, "manifest.yaml", &yaml);
    Manifest::load(&dir.join("manifest.yaml")).expect("valid manifest")
}

/// An OTLP endpoint that takes every span and keeps none: enough for the
/// fleet to give each session a trace id.
async fn span_sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the span sink");
    let address = listener.local_addr().expect("its address");
    let router = axum::Router::new().fallback(|| async { axum::http::StatusCode::OK });
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_batch_live_wants_the_token_and_retries_a_failed_unit() {
    let token = "dashboard-t0ken";
    let spans = span_sink().await;
    let fleet = Fleet::start_with_env(
        "dashboard",
        1,
        2,
        "30s",
        &[
            ("REGATTA_API_TOKEN", token),
            (
                "REGATTA_TRACE_URL",
                "http://127.0.0.1:16686/trace/{trace_id}",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &spans),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    )
    .await;
    let client = ApiClient::new(&fleet.api, Some(token.to_owned()));
    let dir = tempfile::tempdir().expect("temp dir");
    let fixed = dir.path().join("fixed");
    let batch = client
        .enqueue(&live_manifest(dir.path(), &fixed))
        .await
        .expect("enqueue");
    let browser = Browser::start().await;
    let screenshot = artifact_path(&fleet.namespace, "batch");

    // Without the token the page loads, its data calls get 401, and it
    // says so; no batch is shown.
    browser.goto(&format!("{}/ui/", fleet.api)).await;
    let refused = browser
        .wait_for(
            "the page says the token is missing",
            "const p = document.getElementById('auth-needed'); return p && p.textContent",
            json!([]),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        refused.as_str().unwrap_or_default().contains("401"),
        "{refused}"
    );
    let shown = browser
        .run("return document.body.innerText", json!([]))
        .await;
    assert!(
        !shown.as_str().unwrap_or_default().contains(&batch),
        "a batch was shown without the token: {shown}"
    );
    let status = browser
        .run("return fetch('/v1/batches').then(r => r.status)", json!([]))
        .await;
    assert_eq!(status, json!(401), "the data call without the token");

    // With the token (entered once), the batch is listed.
    browser.type_into("#token", token).await;
    browser.click("#token-save").await;
    browser
        .wait_for(
            "the batch is listed",
            "return document.querySelector('tr[data-batch=\"' + arguments[0] + '\"]') !== null",
            json!([batch]),
            Duration::from_secs(10),
        )
        .await;

    // The batch page's progress moves without a reload.
    browser
        .goto(&format!("{}/ui/#/batch/{batch}", fleet.api))
        .await;
    let progress = "const p = document.getElementById('progress'); return p && p.dataset.done";
    let first = browser
        .wait_for(
            "the batch's progress",
            progress,
            json!([]),
            Duration::from_secs(10),
        )
        .await;
    let drawn = browser
        .run(
            "return Array.from(document.querySelectorAll('#summary .bar span')).reduce((w, s) => w + s.offsetWidth, 0)",
            json!([]),
        )
        .await;
    assert!(
        drawn.as_f64().unwrap_or(0.0) > 100.0,
        "the progress bar is drawn: {drawn}"
    );
    browser
        .run("window.regattaLoaded = 'same page'", json!([]))
        .await;
    browser
        .wait_for(
            "the progress changes",
            "const p = document.getElementById('progress'); \
             return p && p.dataset.done !== arguments[0] && window.regattaLoaded === 'same page'",
            json!([first]),
            Duration::from_secs(30),
        )
        .await;

    // The running timeline draws the sessions that started, on the
    // workers' slots, and paints them.
    let timeline = browser
        .wait_for(
            "the timeline",
            "const c = document.getElementById('timeline-chart'); \
             if (!c || Number(c.dataset.bars) < 2) return null; \
             const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
             let painted = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++; \
             return [Number(c.dataset.bars), Number(c.dataset.lanes), painted]",
            json!([]),
            Duration::from_secs(30),
        )
        .await;
    let lanes = timeline[1].as_u64().unwrap_or(0);
    assert!(
        (1..=4).contains(&lanes),
        "the sessions sit on the worker's slots: {timeline}"
    );
    assert!(
        timeline[2].as_u64().unwrap_or(0) > 500,
        "the chart is painted: {timeline}"
    );

    // The review queue lists the failed unit, with its reason and log.
    let review = browser
        .wait_for(
            "the failed unit in the review queue",
            "const r = document.querySelector('#review .review[data-unit=\"flaky\"]'); \
             return r && r.querySelector('pre').textContent.includes('the fix is not in yet') && r.textContent",
            json!([]),
            Duration::from_secs(30),
        )
        .await;
    let failed = client
        .units(&batch, Some("needs_review"))
        .await
        .expect("units");
    let reason = failed
        .iter()
        .find(|u| u.id == "flaky")
        .and_then(|u| u.reason.clone())
        .expect("the failed unit's reason");
    assert!(
        review.as_str().unwrap_or_default().contains(&reason),
        "the reason {reason:?} is shown: {review}"
    );
    browser.screenshot(&screenshot.0).await;
    assert!(
        std::fs::metadata(&screenshot.0).is_ok_and(|m| m.len() > 1000),
        "the screenshot is a picture"
    );

    // Retry, confirmed, re-runs it; with the fix in, it succeeds.
    std::fs::write(&fixed, "").expect("the fix");
    browser
        .click("#review button.retry[data-unit=\"flaky\"]")
        .await;
    let question = browser.dialog_text().await;
    assert!(question.contains("Retry unit flaky"), "{question}");
    browser.accept_dialog().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let units = client.units(&batch, None).await.expect("units");
        let flaky = units.iter().find(|u| u.id == "flaky").expect("flaky");
        if flaky.state == UnitState::Succeeded {
            assert_eq!(flaky.history.len(), 2, "one failed run and the retry");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retried unit did not succeed: {flaky:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .wait_for(
            "the review queue empties",
            "const h = document.querySelector('#review h2'); return h && h.textContent === 'Review queue (0)'",
            json!([]),
            Duration::from_secs(10),
        )
        .await;

    // The unit's page: both sessions, the evidence's sha256, the log.
    browser
        .goto(&format!("{}/ui/#/batch/{batch}/unit/flaky", fleet.api))
        .await;
    let sessions = browser
        .wait_for(
            "the unit's sessions",
            "const rows = document.querySelectorAll('#sessions tr'); \
             return rows.length === 3 && document.getElementById('sessions').textContent",
            json!([]),
            Duration::from_secs(10),
        )
        .await;
    let sessions = sessions.as_str().unwrap_or_default();
    assert!(sessions.contains("sha256"), "{sessions}");
    assert!(
        sessions.contains("succeeded") && sessions.contains("failed"),
        "{sessions}"
    );
    // Each session links to its trace in the tracing UI (--trace-url).
    let units = client.units(&batch, None).await.expect("units");
    let flaky = units.iter().find(|u| u.id == "flaky").expect("flaky");
    let latest = flaky.history.last().and_then(|a| a.trace.clone());
    let trace_id = latest.expect("the retry's trace id").trace_id;
    let link = browser
        .run(
            "const a = document.querySelector('#sessions a[target]'); return a && a.href",
            json!([]),
        )
        .await;
    assert_eq!(
        link,
        json!(format!("http://127.0.0.1:16686/trace/{trace_id}")),
        "the latest session's trace link"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let summary = loop {
        let summary = client.batch(&batch).await.expect("the batch");
        if summary.state.is_terminal() {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "the batch did not end: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        summary.counts.get(&UnitState::Succeeded),
        Some(&21),
        "{summary:?}"
    );
    drop(browser);
    fleet.stop().await;
}

/// A page slower than this is stuck, whatever the machine's load.
const HUNG_MS: f64 = 15_000.0;

/// A 10,000-unit batch: the page draws counts per level, not 10,000 units,
/// and its timeline is one canvas. The times are printed (`--nocapture`):
/// the 1 s is a figure to read on a quiet machine, not an assertion
/// a loaded test run could fail; the bounds below only catch a page that
/// hangs.
#[tokio::test(flavor = "multi_thread")]
async fn a_ten_thousand_unit_batch_page_draws_levels_not_units() {
    let fleet = Fleet::start("dashboard-10k", 0, 1, "30s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut yaml = String::from("batch: big\nplaybook:\n  name: p\n  run: 'true'\nunits:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!("  - id: u{i}\n"));
    }
    write_file(dir.path(), "manifest.yaml", &yaml);
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid manifest");
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let browser = Browser::start().await;
    // Warm the browser's cache of the assets, as a person's second visit would.
    browser.goto(&format!("{}/ui/", fleet.api)).await;
    // A fresh document, so that its clock starts with this navigation.
    browser.goto("about:blank").await;
    browser
        .goto(&format!("{}/ui/#/batch/{batch}", fleet.api))
        .await;
    let rendered = browser
        .wait_for(
            "the batch page",
            "const m = performance.getEntriesByName('regatta-batch-rendered'); \
             return m.length > 0 && m[0].startTime",
            json!([]),
            Duration::from_secs(30),
        )
        .await;
    let rendered = rendered.as_f64().expect("milliseconds");
    let fetched_and_drawn = browser
        .run(
            "return document.getElementById('view').dataset.renderMs",
            json!([]),
        )
        .await;
    let nodes = browser
        .run(
            "return document.getElementsByTagName('*').length",
            json!([]),
        )
        .await;
    let nodes = nodes.as_u64().expect("a count");
    // Expanding the level draws its first units at once.
    let expand = browser
        .run(
            "const t = performance.now(); \
             document.querySelector('#dag .level .head').click(); \
             return [performance.now() - t, document.querySelectorAll('#dag .unit').length]",
            json!([]),
        )
        .await;
    let expand_ms = expand[0].as_f64().expect("milliseconds");
    let drawn = expand[1].as_u64().expect("a count");
    // The running timeline of 10,000 sessions (made up here: running them
    // would take minutes) over 32 slots is laid out and drawn at once.
    let timeline = browser
        .run(
            "const now = Date.now(); const units = []; \
             for (let i = 0; i < 10000; i++) { const s = now - 600000 + i * 55; \
               units.push({ id: 'u' + i, history: [{ worker: 'w' + (i % 8), published_at_ms: s - 20, \
                 started_at_ms: s, ended_at_ms: s + 1500, outcome: i % 97 ? 'Succeeded' : 'Failed', \
                 gates: [{ duration_ms: 300 }] }] }); } \
             const t = performance.now(); \
             const section = timelineSection(units, now, 1200); \
             const c = section.querySelector('canvas'); \
             return [performance.now() - t, Number(c.dataset.bars), Number(c.dataset.lanes)]",
            json!([]),
        )
        .await;
    let timeline_ms = timeline[0].as_f64().expect("milliseconds");
    assert_eq!(
        timeline[1],
        json!(10_000),
        "every session is a bar: {timeline}"
    );
    assert!(
        timeline[2].as_u64().unwrap_or(0) >= 8,
        "a lane per worker slot at least: {timeline}"
    );
    assert!(
        timeline_ms < HUNG_MS,
        "the timeline of 10,000 sessions took {timeline_ms:.0} ms"
    );
    println!("10,000 sessions' timeline laid out and drawn in {timeline_ms:.0} ms");
    println!("10,000 units: drawn {rendered:.0} ms after navigation (its data fetched and drawn in {fetched_and_drawn} ms) with {nodes} elements; a level expanded in {expand_ms:.0} ms ({drawn} units drawn)");
    assert!(nodes < 2_000, "{nodes} elements for 10,000 units");
    assert!(
        drawn > 0 && drawn <= 500,
        "{drawn} units drawn in the level"
    );
    assert!(rendered < HUNG_MS, "the page took {rendered:.0} ms to draw");
    assert!(expand_ms < HUNG_MS, "expanding took {expand_ms:.0} ms");
    drop(browser);
    fleet.stop().await;
}
