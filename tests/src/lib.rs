//! Shared helpers for regatta's integration tests.
//!
//! Every test runs against the real RabbitMQ, Redis and PostgreSQL on
//! localhost (`scripts/services.sh` starts them). A test that cannot reach
//! one fails with a message saying how to start it: it never skips.
//! Each test uses its own namespace, so tests run in parallel on one broker
//! and one Redis without seeing each other's queues or keys.

pub mod git_repo;
pub mod invariants;
pub mod netns;
pub mod proxy;
pub mod stall;

use std::path::PathBuf;

use redis::aio::MultiplexedConnection;

/// The broker URL, from `REGATTA_AMQP_URL` or the local default.
pub fn amqp_url() -> String {
    std::env::var("REGATTA_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The Redis URL, from `REGATTA_REDIS_URL` or the local default.
pub fn redis_url() -> String {
    std::env::var("REGATTA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// A namespace no other test uses.
pub fn unique_namespace(test: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{test}-{}", &id[..8])
}

/// A fresh fleet secret: 64 random hex digits, as `openssl rand -hex 32`
/// prints (the binaries refuse secrets under 32 bytes).
pub fn new_secret() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

/// Connects to RabbitMQ or fails the test saying how to start it.
pub async fn rabbitmq() -> lapin::Connection {
    let properties = lapin::ConnectionProperties::default();
    match lapin::Connection::connect(&amqp_url(), properties).await {
        Ok(connection) => connection,
        Err(e) => panic!(
            "RabbitMQ is not reachable at {}: {e}\n\
             start it with `scripts/services.sh rabbitmq` (or `rabbitmq-server -detached`)",
            amqp_url()
        ),
    }
}

/// Reads up to `count` messages off the namespace's dead-letter queue
/// within `timeout`, acking each: their payloads and the reasons in their
/// header (or a note that the header is missing, for the test to show).
pub async fn dead_letters(
    channel: &lapin::Channel,
    names: &regatta_proto::Names,
    count: usize,
    timeout: std::time::Duration,
) -> Vec<(Vec<u8>, String)> {
    use futures::StreamExt;
    use lapin::types::AMQPValue;
    use regatta_proto::REASON_HEADER;

    let mut consumer = channel
        .basic_consume(
            names.dead_letter_queue().as_str().into(),
            "regatta-tests".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume dead letters");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut letters = Vec::new();
    while letters.len() < count {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let Ok(Some(Ok(delivery))) = next else { break };
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let reason = match headers.inner().get(REASON_HEADER) {
            Some(AMQPValue::LongString(reason)) => reason.to_string(),
            other => format!("(no {REASON_HEADER} header: {other:?})"),
        };
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .expect("ack a dead letter");
        letters.push((delivery.data, reason));
    }
    letters
}

/// A channel with publisher confirms on, for tests that publish.
pub async fn confirm_channel(connection: &lapin::Connection) -> lapin::Channel {
    let channel = connection.create_channel().await.expect("open a channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
}

/// Connects to Redis or fails the test saying how to start it.
pub async fn redis() -> MultiplexedConnection {
    let connect = async {
        let client = redis::Client::open(redis_url())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await?;
        Ok::<_, redis::RedisError>(con)
    };
    match connect.await {
        Ok(con) => con,
        Err(e) => panic!(
            "Redis is not reachable at {}: {e}\n\
             start it with `scripts/services.sh redis` (or `redis-server --daemonize yes`)",
            redis_url()
        ),
    }
}

/// Deletes every Redis key of a namespace.
pub async fn delete_keys(con: &mut MultiplexedConnection, namespace: &str) {
    let pattern = format!("{namespace}:*");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(con)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query_async(con).await;
    }
}

/// Deletes every queue of a namespace.
pub async fn delete_queues(connection: &lapin::Connection, namespace: &str) {
    let Ok(names) = regatta_proto::Names::new(namespace) else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for queue in names.queues(0) {
        let _ = channel
            .queue_delete(queue.name.as_str().into(), Default::default())
            .await;
    }
}

/// The folder holding the workspace's built binaries (`target/<profile>`):
/// test executables live in its `deps/`, benchmark binaries in it.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().map(PathBuf::from).unwrap_or(dir)
    } else {
        dir
    }
}

/// The path of a workspace binary, failing the test if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A coordinator and some workers, as real processes, in their own namespace.
pub struct Fleet {
    pub namespace: String,
    pub api: String,
    pub secret: String,
    coordinator: std::process::Child,
    pub workers: Vec<std::process::Child>,
    worker_dir: tempfile::TempDir,
    lease_ttl: String,
    /// Extra environment for every process of the fleet.
    env: Vec<(String, String)>,
}

impl Fleet {
    /// Starts a coordinator on a free port and `workers` workers with `slots` slots each.
    pub async fn start(test: &str, workers: usize, slots: usize, lease_ttl: &str) -> Fleet {
        Fleet::start_with_env(test, workers, slots, lease_ttl, &[]).await
    }

    /// Like [`Fleet::start`], with extra environment for every process,
    /// applied over the defaults (a broker URL through a test's proxy, say).
    pub async fn start_with_env(
        test: &str,
        workers: usize,
        slots: usize,
        lease_ttl: &str,
        env: &[(&str, &str)],
    ) -> Fleet {
        // Fail early, with how to start them, if the services are down.
        drop(rabbitmq().await);
        drop(redis().await);
        let namespace = unique_namespace(test);
        let secret = new_secret();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (coordinator, api) = spawn_coordinator(&namespace, &secret, &env).await;
        let mut fleet = Fleet {
            namespace,
            api,
            secret,
            coordinator,
            workers: Vec::new(),
            worker_dir: tempfile::tempdir().expect("temp dir"),
            lease_ttl: lease_ttl.to_owned(),
            env,
        };
        for _ in 0..workers {
            fleet.add_worker(slots);
        }
        fleet
    }

    /// Kills the coordinator with SIGKILL and starts a new one on the same
    /// namespace, as a crash and a restart would.
    pub async fn restart_coordinator(&mut self) {
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
        let (coordinator, api) = spawn_coordinator(&self.namespace, &self.secret, &self.env).await;
        self.coordinator = coordinator;
        self.api = api;
    }

    /// The coordinator's process id, to read its CPU time and memory.
    pub fn coordinator_pid(&self) -> u32 {
        self.coordinator.id()
    }

    /// Starts one more worker.
    pub fn add_worker(&mut self, slots: usize) {
        self.add_worker_with_env(slots, &[]);
    }

    /// Starts one more worker, with extra environment applied last (for
    /// example a broker or Redis URL that goes through a test's proxy).
    pub fn add_worker_with_env(&mut self, slots: usize, env: &[(&str, &str)]) {
        self.add_worker_in(&[], slots, env);
    }

    /// Starts one more worker through a command prefix, for example
    /// `ip netns exec NAME` to run it inside a network namespace.
    pub fn add_worker_in(&mut self, prefix: &[String], slots: usize, env: &[(&str, &str)]) {
        let n = self.workers.len();
        let worker_binary = binary("regatta-worker");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command.args(args).arg(&worker_binary);
                command
            }
            None => std::process::Command::new(&worker_binary),
        };
        let own: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        fleet_env(
            &mut command,
            &self.namespace,
            &self.secret,
            &[&self.env, &own],
        );
        let worker = command
            .args([
                "--slots",
                &slots.to_string(),
                "--lease-ttl",
                &self.lease_ttl,
                "--grace",
                "2s",
            ])
            .arg("--work-dir")
            .arg(self.worker_dir.path().join(format!("w{n}")))
            .arg("--artifact-dir")
            .arg(self.artifact_store())
            .arg("--name")
            .arg(format!("w{n}"))
            .spawn()
            .expect("start regatta-worker");
        self.workers.push(worker);
    }

    /// The artifact store every worker of the fleet shares (as a shared
    /// volume would be), where sessions leave their evidence packs.
    pub fn artifact_store(&self) -> PathBuf {
        self.worker_dir.path().join("artifacts")
    }

    pub fn client(&self) -> regatta_coordinator::client::ApiClient {
        regatta_coordinator::client::ApiClient::new(&self.api, None)
    }

    /// Waits until the batch ends, or fails the test after `timeout`.
    pub async fn wait_for_end(
        &self,
        batch: &str,
        timeout: std::time::Duration,
    ) -> regatta_coordinator::service::BatchSummary {
        let client = self.client();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let summary = client.batch(batch).await.expect("batch summary");
            if summary.state.is_terminal() {
                return summary;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "batch {batch} did not end within {timeout:?}: {summary:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stops every process and deletes the namespace's queues and keys.
    pub async fn stop(mut self) {
        self.kill_all();
        let connection = rabbitmq().await;
        delete_queues(&connection, &self.namespace).await;
        let mut con = redis().await;
        delete_keys(&mut con, &self.namespace).await;
    }

    fn kill_all(&mut self) {
        for child in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_all();
        let log = fleet_log(&self.namespace);
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!(
                "--- logs of the fleet {} ({}) ---\n{text}--- end of the fleet's logs ---",
                self.namespace,
                log.display()
            );
        } else {
            let _ = std::fs::remove_file(&log);
        }
    }
}

/// The settings every process of a fleet shares, then the fleet's extra
/// environment and a process's own, each over the one before.
fn fleet_env(
    command: &mut std::process::Command,
    namespace: &str,
    secret: &str,
    layers: &[&[(String, String)]],
) {
    command
        .env("REGATTA_NAMESPACE", namespace)
        .env("REGATTA_SECRET", secret)
        .env("REGATTA_AMQP_URL", amqp_url())
        .env("REGATTA_REDIS_URL", redis_url())
        .env("REGATTA_LOG", "warn");
    for layer in layers {
        command.envs(layer.iter().map(|(k, v)| (k, v)));
    }
    // Logs go to the fleet's file, shown only if the test fails.
    let path = fleet_log(namespace);
    let file = path.parent().map(std::fs::create_dir_all).and_then(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok()
    });
    if let Some(file) = file {
        command.stderr(file);
    }
}

/// The file every process of a fleet writes its logs to: kept out of a
/// passing run's output, printed by the fleet's drop when its test fails.
pub fn fleet_log(namespace: &str) -> PathBuf {
    std::env::temp_dir()
        .join("regatta-test-logs")
        .join(format!("{namespace}.log"))
}

/// Starts `regatta serve` on a free port; returns it and its API address.
async fn spawn_coordinator(
    namespace: &str,
    secret: &str,
    env: &[(String, String)],
) -> (std::process::Child, String) {
    let mut command = std::process::Command::new(binary("regatta"));
    command.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--reap-interval",
        "200ms",
    ]);
    // One name across restarts, as a coordinator restarted in place has: it
    // takes its lock back at once instead of waiting out the lock's TTL.
    command.env("REGATTA_INSTANCE", format!("{namespace}-coordinator"));
    // Git mode's mirrors, out of the source tree.
    command.env(
        "REGATTA_GIT_DIR",
        std::env::temp_dir()
            .join("regatta-test-git")
            .join(namespace),
    );
    fleet_env(&mut command, namespace, secret, &[env]);
    let mut coordinator = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start regatta serve");
    let stdout = coordinator.stdout.take().expect("stdout");
    let read_first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        // Keep draining so the coordinator never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        first
    });
    // A coordinator that cannot start fails the test, it does not hang it.
    let first = tokio::time::timeout(std::time::Duration::from_secs(60), read_first)
        .await
        .expect("the coordinator printed its address within 60 s")
        .expect("read the coordinator's address");
    let api = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the coordinator did not start: first line was {first:?}"))
        .to_owned();
    (coordinator, api)
}

/// Writes a file (and its folders) under `dir`.
pub fn write_file(dir: &std::path::Path, relative: &str, content: &str) {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create folders");
    }
    std::fs::write(&path, content).expect("write file");
    if relative.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// Reads `<unit> <start_ms> <end_ms>` lines that sessions append to a file.
pub fn read_timings(path: &std::path::Path) -> std::collections::BTreeMap<String, (i64, i64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let unit = parts.next()?.to_owned();
            let start = parts.next()?.parse().ok()?;
            let end = parts.next()?.parse().ok()?;
            Some((unit, (start, end)))
        })
        .collect()
}

/// The PostgreSQL connection string, from `REGATTA_TEST_PG` or the local default.
pub fn postgres_url() -> String {
    std::env::var("REGATTA_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".to_owned())
}

/// Connects to PostgreSQL or fails the test saying how to start it.
pub async fn postgres() -> tokio_postgres::Client {
    match tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => panic!(
            "PostgreSQL is not reachable at '{}': {e}\n\
             start it with `scripts/services.sh postgres`",
            postgres_url()
        ),
    }
}

impl Fleet {
    /// Starts another `regatta serve` on the fleet's namespace (a second
    /// coordinator, as a mistaken scale-up would), without waiting for it:
    /// its stdout lines arrive on the receiver.
    pub fn spawn_rival_coordinator(
        &self,
        env: &[(&str, &str)],
    ) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        let own: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut command = std::process::Command::new(binary("regatta"));
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        fleet_env(
            &mut command,
            &self.namespace,
            &self.secret,
            &[&self.env, &own],
        );
        let mut rival = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start regatta serve");
        let stdout = rival.stdout.take().expect("stdout");
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = lines_tx.send(line);
            }
        });
        (rival, lines)
    }

    /// Kills the coordinator with SIGKILL and starts none in its place.
    pub fn kill_coordinator(&mut self) {
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
    }

    /// The coordinator's exit status, if it has exited.
    pub fn coordinator_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.coordinator.try_wait().ok().flatten()
    }

    /// Points the fleet's client at another coordinator's API.
    pub fn use_api(&mut self, api: &str) {
        self.api = api.to_owned();
    }

    /// Kills one worker with SIGKILL, as a machine loss would.
    pub fn kill_worker(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        let _ = worker.kill();
        let _ = worker.wait();
    }
}

impl Fleet {
    /// Publishes events onto the fleet's events queue, sealed with its
    /// secret, as a worker (or anyone who holds the secret) would: how tests
    /// forge, duplicate and reorder results.
    pub async fn publish_events(&self, events: &[regatta_proto::SessionEvent]) {
        let names = regatta_proto::Names::new(&self.namespace).expect("names");
        let signer = regatta_proto::sign::Signer::new(self.secret.as_bytes());
        let connection = rabbitmq().await;
        let channel = confirm_channel(&connection).await;
        for event in events {
            regatta_broker::publish_confirmed(
                &channel,
                &names.events_queue(),
                &regatta_proto::seal(event, &signer),
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish an event");
        }
        let _ = connection.close(200, "done".into()).await;
    }
}

/// A process killed when the test ends, however it ends.
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
