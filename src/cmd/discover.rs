//! LAN discovery over mDNS (DNS-SD): a coordinator advertises itself as
//! `_taskgrid._tcp` (unless `--no-mdns`), `taskgrid discover` lists the
//! coordinators it sees, and `--server auto` (workers and the CLI) connects
//! to one of them.
//!
//! A coordinator that listens on the loopback advertises on the loopback
//! only (nobody else could reach it); one that listens on other addresses
//! advertises on every interface with that interface's addresses. Its TXT
//! record says its version, whether it speaks TLS, which tokens it
//! requires, and the URL to use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

/// The DNS-SD service type.
pub(crate) const SERVICE_TYPE: &str = "_taskgrid._tcp.local.";

/// How long `--server auto` looks for a coordinator.
const AUTO_WAIT: Duration = Duration::from_secs(5);

/// A coordinator advertising itself; stops when dropped.
pub(crate) struct Advert {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Drop for Advert {
    fn drop(&mut self) {
        // Say goodbye (a TTL-0 record), then stop the daemon's thread.
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(Duration::from_millis(500));
        }
        let _ = self.daemon.shutdown();
    }
}

/// What a coordinator says of itself.
pub(crate) struct Offer<'a> {
    /// Instance name (unique on the network: host name and port).
    pub(crate) name: &'a str,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The URL clients and workers use.
    pub(crate) url: &'a str,
    pub(crate) tls: bool,
    pub(crate) client_token: bool,
    pub(crate) worker_token: bool,
}

/// Advertises a coordinator on the network (on the loopback only, when it
/// listens there).
pub(crate) fn advertise(offer: &Offer<'_>) -> anyhow::Result<Advert> {
    let daemon = ServiceDaemon::new().context("starting mDNS")?;
    let loopback = offer.addr.ip().is_loopback();
    if loopback {
        daemon.disable_interface(IfKind::All)?;
        daemon.enable_interface(IfKind::LoopbackV4)?;
    }
    let yes_no = |b: bool| if b { "true" } else { "false" };
    let properties = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("tls", yes_no(offer.tls)),
        ("client_token", yes_no(offer.client_token)),
        ("worker_token", yes_no(offer.worker_token)),
        ("url", offer.url),
    ];
    let host = format!("{}.local.", host_label(offer.name));
    let info = if loopback || !offer.addr.ip().is_unspecified() {
        ServiceInfo::new(
            SERVICE_TYPE,
            offer.name,
            &host,
            offer.addr.ip(),
            offer.addr.port(),
            &properties[..],
        )
    } else {
        ServiceInfo::new(
            SERVICE_TYPE,
            offer.name,
            &host,
            "",
            offer.addr.port(),
            &properties[..],
        )
        .map(ServiceInfo::enable_addr_auto)
    }
    .context("the mDNS record")?;
    let fullname = info.get_fullname().to_owned();
    daemon.register(info).context("advertising over mDNS")?;
    Ok(Advert { daemon, fullname })
}

/// A DNS label of `name`: letters, digits and `-`.
fn host_label(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// A coordinator seen on the network.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Seen {
    /// Its instance name.
    pub(crate) name: String,
    /// The URL it gives (else one made of its address and port).
    pub(crate) url: String,
    pub(crate) version: String,
    pub(crate) tls: bool,
    pub(crate) client_token: bool,
    pub(crate) worker_token: bool,
}

impl Seen {
    fn of(info: &ServiceInfo) -> Option<Seen> {
        let name = info
            .get_fullname()
            .strip_suffix(&format!(".{SERVICE_TYPE}"))
            .unwrap_or(info.get_fullname())
            .to_owned();
        let flag = |k: &str| info.get_property_val_str(k) == Some("true");
        let tls = flag("tls");
        let url = match info.get_property_val_str("url").filter(|u| !u.is_empty()) {
            Some(u) => u.to_owned(),
            None => {
                let ip = info.get_addresses().iter().next().copied()?;
                let scheme = if tls { "https" } else { "http" };
                format!("{scheme}://{}", SocketAddr::new(ip, info.get_port()))
            }
        };
        Some(Seen {
            name,
            url,
            version: info
                .get_property_val_str("version")
                .unwrap_or("?")
                .to_owned(),
            tls,
            client_token: flag("client_token"),
            worker_token: flag("worker_token"),
        })
    }
}

/// Looks for coordinators for `wait` (on every interface and the
/// loopback); with `want`, stops at the first whose name is `want` (or at
/// the first of all when `want` is `Some("")`).
fn look(wait: Duration, want: Option<&str>) -> anyhow::Result<Vec<Seen>> {
    let daemon = ServiceDaemon::new().context("starting mDNS")?;
    daemon.enable_interface(IfKind::LoopbackV4)?;
    let events = daemon.browse(SERVICE_TYPE).context("browsing mDNS")?;
    let deadline = Instant::now() + wait;
    let mut seen = BTreeMap::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(info)) => {
                if let Some(s) = Seen::of(&info) {
                    let done = want.is_some_and(|w| w.is_empty() || w == s.name);
                    seen.insert(s.name.clone(), s);
                    if done {
                        break;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    let _ = daemon.shutdown();
    let mut found: Vec<Seen> = seen.into_values().collect();
    if let Some(w) = want.filter(|w| !w.is_empty()) {
        found.retain(|s| s.name == w);
    }
    Ok(found)
}

/// `--server`: `auto` (the first coordinator found over mDNS) or
/// `auto:NAME` (the one advertised as NAME) becomes its URL; anything else
/// is returned as it is.
pub(crate) fn resolve(server: &str) -> anyhow::Result<String> {
    let want = match server.strip_prefix("auto") {
        Some("") => "",
        Some(rest) => match rest.strip_prefix(':') {
            Some(name) if !name.is_empty() => name,
            _ => return Ok(server.to_owned()),
        },
        None => return Ok(server.to_owned()),
    };
    let found = look(AUTO_WAIT, Some(want))?;
    let Some(first) = found.into_iter().next() else {
        if want.is_empty() {
            bail!(
                "--server auto: no taskgrid coordinator answered over mDNS within {AUTO_WAIT:?} (is one running on this network, without --no-mdns?)"
            );
        }
        bail!(
            "--server auto:{want}: no coordinator named {want:?} answered over mDNS within {AUTO_WAIT:?} (`taskgrid discover` lists those that do)"
        );
    };
    eprintln!(
        "taskgrid: found coordinator {} at {}",
        first.name, first.url
    );
    Ok(first.url)
}

/// Options of `taskgrid discover`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How long to listen for coordinators.
    #[arg(long, default_value = "2s", value_parser = super::submit::parse_duration)]
    wait: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `taskgrid discover`: the coordinators advertising themselves nearby.
pub(crate) async fn run(a: Args) -> anyhow::Result<i32> {
    let found = tokio::task::spawn_blocking(move || look(a.wait, None))
        .await
        .context("discovery")??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(0);
    }
    if found.is_empty() {
        eprintln!(
            "no taskgrid coordinator answered over mDNS within {:?}",
            a.wait
        );
        return Ok(1);
    }
    println!(
        "{:<32}  {:<36}  {:<8}  {:<5}  tokens",
        "name", "url", "version", "tls"
    );
    for s in &found {
        let tokens = match (s.client_token, s.worker_token) {
            (true, true) => "client, worker",
            (true, false) => "client",
            (false, true) => "worker",
            (false, false) => "none",
        };
        println!(
            "{:<32}  {:<36}  {:<8}  {:<5}  {tokens}",
            s.name, s.url, s.version, s.tls
        );
    }
    Ok(0)
}
