//! Shared helpers for regatta's integration tests.
//!
//! Every test runs against the real RabbitMQ, Redis and PostgreSQL on
//! localhost (`scripts/services.sh` starts them). A test that cannot reach
//! one fails with a message saying how to start it: it never skips.
//! Each test uses its own namespace, so tests run in parallel on one broker
//! and one Redis without seeing each other's queues or keys.

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

/// Connects to RabbitMQ or fails the test saying how to start it.
pub async fn rabbitmq() -> lapin::Connection {
    match regatta_coordinator::broker::connect(&amqp_url(), "regatta-tests").await {
        Ok(connection) => connection,
        Err(e) => panic!(
            "RabbitMQ is not reachable at {}: {e}\n\
             start it with `scripts/services.sh rabbitmq` (or `rabbitmq-server -detached`)",
            amqp_url()
        ),
    }
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

/// The folder holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/debug"))
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
