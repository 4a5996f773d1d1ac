//! The settings every process of a fleet shares, declared once for both
//! binaries: where the broker and Redis are, the fleet's secret, and the
//! namespace of its queues and keys.

use std::path::PathBuf;

use regatta_proto::DEFAULT_NAMESPACE;

/// Flags (and their variables) that `regatta` and `regatta-worker` spell
/// alike; each binary flattens them into its own arguments. They are
/// global, so `regatta` accepts them before or after its subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        global = true,
        env = "REGATTA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(
        long,
        global = true,
        env = "REGATTA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,
    /// The key work orders are signed with; the coordinator and every
    /// worker must have the same. Prefer --secret-file: a flag's value is
    /// visible to every process of the machine in /proc/<pid>/cmdline.
    #[arg(long, global = true, env = "REGATTA_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding the key work orders are signed with (at least 32
    /// bytes: `openssl rand -hex 32 > FILE`), readable by its owner only.
    #[arg(long, global = true, value_name = "FILE", env = "REGATTA_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Prefix of every queue and Redis key, so that several fleets share
    /// one broker and one Redis without seeing each other's work.
    #[arg(long, global = true, env = "REGATTA_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

impl FleetArgs {
    /// Says whether the secret came from the `--secret` flag, which every
    /// process can read, rather than the environment; ask before the
    /// environment is scrubbed.
    pub fn secret_on_command_line(&self) -> bool {
        self.secret.is_some() && std::env::var("REGATTA_SECRET").ok() != self.secret
    }
}
