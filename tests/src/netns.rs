//! A network namespace of a test's own, joined to the host by a veth pair,
//! so that a test can cut one worker off the network for real: taking the
//! link down drops that worker's packets in the kernel, with no FIN and no
//! RST, exactly as a partition does. Its connections hang until heartbeats
//! and timeouts notice; new ones time out.
//!
//! The services of this machine listen on 127.0.0.1 only, which a process in
//! another namespace cannot reach. A forwarder in the host namespace listens
//! on the host end of the veth pair and relays to the service: it only
//! translates the address, the cut itself is the link going down.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use tokio::net::{TcpListener, TcpStream};

/// A named network namespace with a veth pair; deleted on drop.
pub struct NetworkNamespace {
    pub name: String,
    host_link: String,
    /// The host end's address, where the namespace reaches the forwarders.
    pub host_address: Ipv4Addr,
}

impl NetworkNamespace {
    /// Creates the namespace and its veth pair, named after this test
    /// process, in a /30 of 10.231.0.0/16 derived from its pid. First clears
    /// what killed runs left (namespaces whose process is gone). Fails the
    /// test, saying what is needed, if the machine does not allow it: a
    /// partition test never skips.
    pub fn create() -> NetworkNamespace {
        clear_leftovers();
        let pid = std::process::id();
        let name = format!("regatta-{pid}");
        let host_link = format!("rgh{pid}");
        let inner_link = format!("rgn{pid}");
        // Quad `pid % 16000` of 10.231.0.0/16: host .1, namespace .2.
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + (pid % 16_000) * 4;
        let host_address = Ipv4Addr::from(base + 1);
        let inner_address = Ipv4Addr::from(base + 2);
        let namespace = NetworkNamespace {
            name: name.clone(),
            host_link: host_link.clone(),
            host_address,
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
        ]);
        ip(&["link", "set", &inner_link, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("{host_address}/30"),
            "dev",
            &host_link,
        ]);
        ip(&["link", "set", &host_link, "up"]);
        let inside = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend_from_slice(args);
            ip(&full);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&[
            "addr",
            "add",
            &format!("{inner_address}/30"),
            "dev",
            &inner_link,
        ]);
        inside(&["link", "set", &inner_link, "up"]);
        namespace
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Cuts the namespace off: the link goes down and packets are dropped.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]);
    }

    /// Brings the link back; connections that survived resume.
    pub fn restore(&self) {
        ip(&["link", "set", &self.host_link, "up"]);
    }

    /// Relays connections from the host end of the veth pair to `target` (a
    /// service on the host's loopback), and returns the address the
    /// namespace dials. The relay lives as long as the test's runtime.
    pub async fn forward(&self, target: &'static str) -> SocketAddr {
        let listener = TcpListener::bind((self.host_address, 0))
            .await
            .unwrap_or_else(|e| panic!("bind a forwarder on {}: {e}", self.host_address));
        let address = listener.local_addr().expect("forwarder address");
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        address
    }
}

impl Drop for NetworkNamespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}

/// Deletes the namespaces (and veth pairs) of test processes that are gone.
fn clear_leftovers() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("regatta-") else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("rgh{pid}")])
                .output();
        }
    }
}

/// Runs `ip` and fails the test with what it said, and what it needs.
fn ip(args: &[&str]) {
    let output = match Command::new("ip").args(args).output() {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run `ip` ({e}): the network partition test needs iproute2 \
             (`apt-get install iproute2`), run as root"
        ),
    };
    assert!(
        output.status.success(),
        "`ip {}` failed: {}\nthe network partition test needs root (CAP_NET_ADMIN and \
         CAP_SYS_ADMIN) to create a network namespace and a veth pair; run the tests as root",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}
