//! Static checks of the Docker deployment: `compose.yaml`,
//! `deploy/Dockerfile` and `deploy/example.env`, against each other and
//! against the `--help` of the binaries they run.
//!
//! No Docker engine runs these files in CI, so these checks keep them honest:
//! a flag or an environment variable renamed in the binaries, a port that
//! drifts from `--listen`, a workspace member the Dockerfile forgets, or a
//! `${VARIABLE}` that the example environment does not define fails here,
//! naming the service and the flag.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The services `docker compose up` must start.
const FLEET: [&str; 6] = [
    "rabbitmq",
    "redis",
    "jaeger",
    "coordinator",
    "worker",
    "demo",
];

/// The services that run regatta's own binaries.
const REGATTA_SERVICES: [&str; 3] = ["coordinator", "worker", "demo"];

/// The variables the coordinator and the workers must agree on: a mismatch
/// means orders signed with another key or published where nobody listens.
const SHARED_CONNECTION: [&str; 4] = [
    "REGATTA_AMQP_URL",
    "REGATTA_REDIS_URL",
    "REGATTA_SECRET",
    "REGATTA_NAMESPACE",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn compose() -> Value {
    serde_saphyr::from_str(&read("compose.yaml"))
        .unwrap_or_else(|e| panic!("compose.yaml is not valid YAML: {e}"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The service's command as an argument list (compose takes a list or a string).
fn command(name: &str, service: &Value) -> Vec<String> {
    match service.get("command") {
        Some(Value::Array(items)) => items.iter().map(scalar).collect(),
        Some(Value::String(line)) => line.split_whitespace().map(str::to_owned).collect(),
        other => panic!("service `{name}` has no command (found {other:?})"),
    }
}

/// The service's environment (compose takes a mapping or `NAME=value` items).
fn environment(name: &str, service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                match item.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (item, String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("service `{name}` has an unreadable environment: {other:?}"),
    }
}

/// The value of `--flag value` or `--flag=value` in an argument list.
fn flag_value(argv: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    argv.iter().enumerate().find_map(|(i, arg)| {
        if arg == flag {
            argv.get(i + 1).cloned()
        } else {
            arg.strip_prefix(&prefix).map(str::to_owned)
        }
    })
}

/// What a binary (or one of its subcommands) says it accepts.
struct Help {
    /// How the help was asked for, for messages: `regatta serve --help`.
    invocation: String,
    /// Every long flag declared on an option line.
    flags: BTreeSet<String>,
    /// The help text with every run of whitespace made one space, because
    /// clap wraps `[env: NAME=]` across lines in narrow columns.
    text: String,
}

impl Help {
    /// Runs the help of the binary an argument list starts with, and of its
    /// subcommand for `regatta`.
    fn of(service: &str, argv: &[String]) -> Help {
        let binary = argv
            .first()
            .unwrap_or_else(|| panic!("service `{service}` has an empty command"));
        let mut args: Vec<&str> = Vec::new();
        match binary.as_str() {
            "regatta" => {
                let subcommand = argv
                    .get(1)
                    .filter(|arg| !arg.starts_with('-'))
                    .unwrap_or_else(|| {
                        panic!("service `{service}` runs `regatta` without a subcommand first")
                    });
                args.push(subcommand);
            }
            "regatta-worker" => {}
            other => panic!(
                "service `{service}` runs `{other}`, not `regatta` or `regatta-worker`: \
                 the image has only those two"
            ),
        }
        args.push("--help");
        let mut help = Command::new(regatta_tests::binary(binary));
        help.args(&args);
        // Values from the test's own environment would show in the help.
        for (name, _) in std::env::vars() {
            if name.starts_with("REGATTA_") {
                help.env_remove(name);
            }
        }
        let output = help
            .output()
            .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
        let invocation = format!("{binary} {}", args.join(" "));
        assert!(
            output.status.success(),
            "`{invocation}` failed for service `{service}`: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let raw = String::from_utf8_lossy(&output.stdout).into_owned();
        Help {
            invocation,
            flags: declared_flags(&raw),
            text: raw.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    /// Whether clap lists the variable (`[env: NAME=...]`, or `[env: NAME]`
    /// for a hidden value).
    fn reads_env(&self, name: &str) -> bool {
        self.text.contains(&format!("[env: {name}="))
            || self.text.contains(&format!("[env: {name}]"))
    }
}

/// The long flags of clap's option lines (`  -h, --help`, `      --slots <SLOTS>`);
/// descriptions are indented further and never count.
fn declared_flags(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if line.len() - trimmed.len() > 6 {
            continue;
        }
        let long = match trimmed.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') => match trimmed.split_once(", ") {
                Some((_, long)) => long,
                None => continue,
            },
            _ => trimmed,
        };
        if let Some(rest) = long.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() {
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

#[test]
fn every_service_of_the_fleet_exists() {
    let compose = compose();
    for name in FLEET {
        service(&compose, name);
    }
    let image = |name: &str| scalar(&service(&compose, name)["image"]);
    assert!(
        image("rabbitmq").starts_with("rabbitmq:3.13-management"),
        "service `rabbitmq` must run rabbitmq:3.13-management (the UI on 15672), not {}",
        image("rabbitmq")
    );
    assert!(
        image("redis").starts_with("redis:7"),
        "service `redis` must run redis:7, not {}",
        image("redis")
    );
    assert!(
        image("jaeger").starts_with("jaegertracing/all-in-one"),
        "service `jaeger` must run jaegertracing/all-in-one, not {}",
        image("jaeger")
    );
    let redis = command("redis", service(&compose, "redis"));
    assert!(
        redis
            .windows(2)
            .any(|w| w[0] == "--appendonly" && w[1] == "yes"),
        "service `redis` must run with `--appendonly yes`: a Redis that restarts empty \
         forgets every lease (command: {redis:?})"
    );
    let jaeger = environment("jaeger", service(&compose, "jaeger"));
    assert_eq!(
        jaeger.get("COLLECTOR_OTLP_ENABLED").map(String::as_str),
        Some("true"),
        "service `jaeger` must set COLLECTOR_OTLP_ENABLED=true"
    );
    // Only what a user opens is published (the UIs and the API), each on a
    // host port that .env can change; AMQP, Redis and OTLP stay inside.
    for (name, ports) in [
        ("rabbitmq", &[15672][..]),
        ("redis", &[][..]),
        ("jaeger", &[16686][..]),
        ("coordinator", &[7700][..]),
    ] {
        let published = container_ports(name, service(&compose, name));
        assert_eq!(
            published, ports,
            "service `{name}` must publish exactly {ports:?} (publishes {published:?})"
        );
        if let Some(Value::Array(entries)) = service(&compose, name).get("ports") {
            for entry in entries {
                let entry = scalar(entry);
                assert!(
                    entry.starts_with("${REGATTA_") && entry.contains(":-"),
                    "service `{name}` publishes `{entry}` on a fixed host port: use \
                     `${{REGATTA_..._PORT:-default}}:port` so that .env can move it"
                );
            }
        }
    }
}

#[test]
fn commands_use_only_flags_the_binaries_accept() {
    let compose = compose();
    for name in REGATTA_SERVICES {
        let argv = command(name, service(&compose, name));
        let help = Help::of(name, &argv);
        for arg in argv.iter().filter(|arg| arg.starts_with("--")) {
            let flag = arg.split_once('=').map_or(arg.as_str(), |(flag, _)| flag);
            assert!(
                help.flags.contains(flag),
                "service `{name}` passes `{flag}`, but `{}` declares no such flag \
                 (it declares {:?}); rename it in compose.yaml",
                help.invocation,
                help.flags
            );
        }
    }
    let coordinator = command("coordinator", service(&compose, "coordinator"));
    assert_eq!(
        coordinator[..2],
        ["regatta", "serve"],
        "service `coordinator` must run `regatta serve`"
    );
    let worker = command("worker", service(&compose, "worker"));
    assert_eq!(
        worker[0], "regatta-worker",
        "service `worker` must run `regatta-worker`"
    );
    let demo = command("demo", service(&compose, "demo"));
    assert_eq!(
        demo[..2],
        ["regatta", "enqueue"],
        "service `demo` must run `regatta enqueue`"
    );
    assert!(
        demo.iter().any(|arg| arg == "--watch"),
        "service `demo` must follow its batch with `--watch`, so that `docker compose up` \
         shows it running"
    );
}

#[test]
fn regatta_variables_are_ones_the_binaries_read() {
    let compose = compose();
    for name in REGATTA_SERVICES {
        let service = service(&compose, name);
        let help = Help::of(name, &command(name, service));
        for variable in environment(name, service).keys() {
            if variable.starts_with("REGATTA_") {
                assert!(
                    help.reads_env(variable),
                    "service `{name}` sets `{variable}`, but `{}` lists no `[env: {variable}]`: \
                     the binary would ignore it",
                    help.invocation
                );
            }
        }
    }
    let coordinator = environment("coordinator", service(&compose, "coordinator"));
    let worker = environment("worker", service(&compose, "worker"));
    for variable in SHARED_CONNECTION {
        assert!(
            coordinator.contains_key(variable),
            "service `coordinator` must set `{variable}`"
        );
        assert_eq!(
            coordinator.get(variable),
            worker.get(variable),
            "services `coordinator` and `worker` must set `{variable}` alike"
        );
    }
    assert!(
        coordinator.contains_key("REGATTA_API_TOKEN"),
        "service `coordinator` must set `REGATTA_API_TOKEN`: without it the API has no auth"
    );
    let demo = environment("demo", service(&compose, "demo"));
    assert_eq!(
        demo.get("REGATTA_API_TOKEN"),
        coordinator.get("REGATTA_API_TOKEN"),
        "service `demo` must send the coordinator's `REGATTA_API_TOKEN`"
    );
}

/// The container side of a service's published ports.
fn container_ports(name: &str, service: &Value) -> Vec<u16> {
    let Some(Value::Array(ports)) = service.get("ports") else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|port| {
            let target = match port {
                Value::Object(long) => scalar(&long["target"]),
                short => {
                    let short = scalar(short);
                    let without_protocol = short.split('/').next().unwrap_or_default();
                    without_protocol
                        .rsplit(':')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                }
            };
            target
                .parse()
                .unwrap_or_else(|_| panic!("service `{name}` has an unreadable port {port}"))
        })
        .collect()
}

#[test]
fn coordinator_ports_follow_its_listen_address() {
    let compose = compose();
    let coordinator = service(&compose, "coordinator");
    let argv = command("coordinator", coordinator);
    let listen = flag_value(&argv, "--listen")
        .expect("service `coordinator` must pass `--listen` (the default listens on 127.0.0.1)");
    let (host, port) = listen
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("service `coordinator` has `--listen {listen}` without a port"));
    assert_eq!(
        host, "0.0.0.0",
        "service `coordinator` must pass `--listen 0.0.0.0:PORT`: other containers cannot \
         reach {host}"
    );
    let port: u16 = port.parse().expect("the `--listen` port is a number");
    let published = container_ports("coordinator", coordinator);
    assert!(
        published.contains(&port),
        "service `coordinator` listens on {port} (`--listen {listen}`) but publishes {published:?}"
    );
    let health = coordinator["healthcheck"]["test"].to_string();
    assert!(
        health.contains(&format!(":{port}/healthz")),
        "service `coordinator`'s healthcheck must ask /healthz on port {port}: {health}"
    );
    let demo = environment("demo", service(&compose, "demo"));
    let api = demo
        .get("REGATTA_API")
        .expect("service `demo` must set `REGATTA_API` to the coordinator's address");
    assert_eq!(
        api.trim_end_matches('/'),
        format!("http://coordinator:{port}"),
        "service `demo` must reach the coordinator on port {port}"
    );
}

#[test]
fn services_wait_for_healthy_dependencies() {
    let compose = compose();
    for (name, dependencies) in [
        ("coordinator", &["rabbitmq", "redis"][..]),
        ("worker", &["coordinator"][..]),
        ("demo", &["coordinator"][..]),
    ] {
        for dependency in dependencies {
            let condition = &service(&compose, name)["depends_on"][dependency]["condition"];
            assert_eq!(
                condition.as_str(),
                Some("service_healthy"),
                "service `{name}` must depend on `{dependency}` with condition service_healthy"
            );
            let test = &service(&compose, dependency)["healthcheck"]["test"];
            assert!(
                !test.is_null(),
                "service `{name}` waits for `{dependency}` to be healthy, but `{dependency}` \
                 has no healthcheck"
            );
        }
    }
    for (name, expected) in [
        // `ping` passes while the node boots, before AMQP listens.
        ("rabbitmq", "check_port_connectivity"),
        ("redis", "redis-cli"),
        ("coordinator", "curl"),
    ] {
        let test = service(&compose, name)["healthcheck"]["test"].to_string();
        assert!(
            test.contains(expected),
            "service `{name}`'s healthcheck must use {expected}: {test}"
        );
    }
    let demo = service(&compose, "demo");
    assert_eq!(
        demo["restart"].as_str(),
        Some("no"),
        "service `demo` is one-shot: it must have `restart: \"no\"`"
    );
    assert!(
        demo.get("profiles").is_none(),
        "service `demo` must start with a plain `docker compose up` (no profiles)"
    );
    let worker = service(&compose, "worker");
    assert!(
        worker["deploy"]["replicas"].as_u64().unwrap_or(0) >= 1,
        "service `worker` must set `deploy: replicas`"
    );
    for fixed in ["container_name", "ports"] {
        assert!(
            worker.get(fixed).is_none(),
            "service `worker` must not set `{fixed}`: it would break \
             `docker compose up --scale worker=N`"
        );
    }
}

/// The container path a service mounts a host path (`./examples`) or a named
/// volume (`artifacts`) at.
fn mount_point(service: &Value, source: &str) -> Option<String> {
    let Some(Value::Array(volumes)) = service.get("volumes") else {
        return None;
    };
    volumes.iter().find_map(|volume| {
        let volume = scalar(volume);
        let mut parts = volume.split(':');
        let (from, to) = (parts.next()?, parts.next()?);
        (from.trim_end_matches('/') == source).then(|| to.to_owned())
    })
}

#[test]
fn the_fleet_sees_the_demo_manifest_at_one_path() {
    let compose = compose();
    let examples = mount_point(service(&compose, "coordinator"), "./examples")
        .expect("service `coordinator` must mount ./examples");
    assert!(
        examples.starts_with('/'),
        "./examples must be mounted at an absolute path, not {examples}"
    );
    for name in ["worker", "demo"] {
        assert_eq!(
            mount_point(service(&compose, name), "./examples").as_deref(),
            Some(examples.as_str()),
            "service `{name}` must mount ./examples at {examples}, like the coordinator: \
             manifests' paths are made absolute on enqueue"
        );
    }
    for name in ["coordinator", "worker"] {
        assert_eq!(
            mount_point(service(&compose, name), "artifacts").as_deref(),
            Some("/artifacts"),
            "service `{name}` must mount the `artifacts` volume at /artifacts"
        );
    }
    let volumes = &compose["volumes"];
    for volume in ["artifacts", "redis-data"] {
        assert!(
            volumes.get(volume).is_some(),
            "compose.yaml must declare the named volume `{volume}`"
        );
    }
    let demo = command("demo", service(&compose, "demo"));
    let manifest = demo
        .iter()
        .skip(2)
        .find(|arg| !arg.starts_with('-'))
        .expect("service `demo` must name a manifest");
    let relative = manifest
        .strip_prefix(&format!("{examples}/"))
        .unwrap_or_else(|| panic!("service `demo` enqueues {manifest}, outside {examples}"));
    assert!(
        repo_root().join("examples").join(relative).is_file(),
        "service `demo` enqueues {manifest}, but examples/{relative} does not exist"
    );
    let worker = command("worker", service(&compose, "worker"));
    let work_dir = flag_value(&worker, "--work-dir")
        .expect("service `worker` must pass `--work-dir` (the default is relative)");
    assert!(
        work_dir.starts_with('/'),
        "service `worker` must pass an absolute `--work-dir`, not {work_dir}"
    );
}

/// The Dockerfile's instructions, with continuation lines joined and comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(partial) => {
                current.push_str(partial);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let instruction = current.split_whitespace().collect::<Vec<_>>().join(" ");
                if !instruction.is_empty() {
                    instructions.push(instruction);
                }
                current.clear();
            }
        }
    }
    instructions
}

/// The `members = [...]` of the root Cargo.toml.
fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let start = manifest
        .find("members")
        .expect("Cargo.toml lists its workspace members");
    let list = &manifest[start..];
    let list = &list[list.find('[').expect("members = [") + 1..];
    let list = &list[..list.find(']').expect("members = [...]")];
    list.split(',')
        .map(|member| member.trim().trim_matches('"').to_owned())
        .filter(|member| !member.is_empty())
        .collect()
}

/// The `[package] name` of a workspace member.
fn package_name(member: &str) -> String {
    read(&format!("{member}/Cargo.toml"))
        .lines()
        .find_map(|line| line.trim().strip_prefix("name = "))
        .map(|name| name.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("{member}/Cargo.toml has no package name"))
}

#[test]
fn dockerfile_builds_both_binaries_as_a_non_root_user() {
    let instructions = dockerfile_instructions();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    assert!(
        stages.len() >= 2,
        "deploy/Dockerfile must be multi-stage: a builder and a slim runtime"
    );
    let builds: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("RUN ") && i.contains("cargo build"))
        .collect();
    let last_build = builds
        .last()
        .expect("deploy/Dockerfile must run `cargo build`");
    for needed in ["--release", "--locked"] {
        assert!(
            last_build.contains(needed),
            "deploy/Dockerfile must build with `{needed}`: {last_build}"
        );
    }
    for (member, binary) in [("coordinator", "regatta"), ("worker", "regatta-worker")] {
        let package = package_name(member);
        for build in &builds {
            assert!(
                build.contains(&format!("-p {package}")),
                "deploy/Dockerfile must build `-p {package}` (binary `{binary}`): {build}"
            );
        }
        regatta_tests::binary(binary);
        assert!(
            instructions.iter().any(|i| i.starts_with("COPY --from=")
                && i.contains(&format!("target/release/{binary} "))
                && i.ends_with("/usr/local/bin/")),
            "deploy/Dockerfile must copy target/release/{binary} into /usr/local/bin/"
        );
    }
    // The dependency layer builds before the sources are copied: every
    // member's manifest must be there, or the workspace does not resolve.
    let first_build = instructions
        .iter()
        .position(|i| i.starts_with("RUN ") && i.contains("cargo build"))
        .expect("a cargo build");
    for member in workspace_members() {
        assert!(
            instructions[..first_build]
                .iter()
                .any(|i| i.starts_with("COPY ") && i.contains(&format!("{member}/Cargo.toml"))),
            "deploy/Dockerfile must copy {member}/Cargo.toml before its first `cargo build`: \
             {member} is a workspace member"
        );
    }
    let runtime = &instructions[*stages.last().expect("a stage")..];
    let user = runtime
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("deploy/Dockerfile's runtime stage must set a USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !["root", "0"].contains(&name),
        "deploy/Dockerfile's runtime stage must run as a non-root USER, not {user}"
    );
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("RUN ") && i.contains("install") && i.contains(" curl")),
        "deploy/Dockerfile's runtime stage must install curl: the coordinator's healthcheck uses it"
    );

    let compose = compose();
    for name in REGATTA_SERVICES {
        let build = &service(&compose, name)["build"];
        assert_eq!(
            build["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "service `{name}` must build deploy/Dockerfile"
        );
        assert_eq!(
            build["context"].as_str(),
            Some("."),
            "service `{name}` must build from the repository root"
        );
    }
}

/// Every `${NAME...}` or `$NAME` compose would interpolate in a string (`$$` is a literal `$`).
fn interpolated(text: &str, found: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => {
                let name: String = text[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.insert(name);
                i += 2;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let name: String = text[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.insert(name);
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// Every string of a YAML document: keys and values, as compose interpolates them.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(map) => {
            for (key, item) in map {
                out.push(key.clone());
                strings(item, out);
            }
        }
        _ => {}
    }
}

/// The `NAME=value` lines of deploy/example.env.
fn example_env() -> BTreeMap<String, String> {
    read("deploy/example.env")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("deploy/example.env: `{line}` is not NAME=value"));
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

#[test]
fn example_env_defines_every_variable_compose_interpolates() {
    let compose = compose();
    let mut texts = Vec::new();
    strings(&compose, &mut texts);
    let mut variables = BTreeSet::new();
    for text in &texts {
        interpolated(text, &mut variables);
    }
    assert!(
        variables.contains("REGATTA_SECRET"),
        "compose.yaml must take REGATTA_SECRET from .env"
    );
    let example = example_env();
    for variable in &variables {
        assert!(
            example.contains_key(variable),
            "compose.yaml interpolates `${{{variable}}}`, but deploy/example.env does not \
             define {variable}"
        );
    }
    // Secrets come from .env and are required: never a literal, never a default.
    for name in REGATTA_SERVICES {
        for (variable, value) in environment(name, service(&compose, name)) {
            if variable.contains("SECRET") || variable.contains("TOKEN") {
                assert!(
                    value.starts_with(&format!("${{{variable}:?")),
                    "service `{name}` must set `{variable}` as `${{{variable}:?...}}` from .env, \
                     not `{value}`"
                );
                assert!(
                    example[&variable].starts_with("change-me"),
                    "deploy/example.env must hold a `change-me-...` placeholder for {variable}"
                );
            }
        }
    }
    for ignore_file in [".gitignore", ".dockerignore"] {
        let ignores = read(ignore_file);
        assert!(
            ignores
                .lines()
                .any(|line| matches!(line.trim(), ".env" | "/.env")),
            "{ignore_file} must list `.env`: it holds the fleet's secrets"
        );
    }
}
