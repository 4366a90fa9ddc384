//! `taskgrid server`: the coordinator — the worker gateway (gRPC) and the
//! HTTP API on one port, on the store `--store` names (default: SQLite in
//! the data directory).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use taskgrid_core::{KeyLimit, Rate};
use taskgrid_proto::worker::worker_gateway_server::WorkerGatewayServer;
use taskgrid_runtime::{SystemConfig, TaskSystem};
use taskgrid_server::http::{ApiConfig, router};
use taskgrid_server::tls::{self, Peer, ServerTls, TlsListener};
use taskgrid_server::{Front, Gateway, GatewayConfig, gateway};
use taskgrid_store::{Durability, PostgresOptions, SqliteOptions, StoreConfig};

/// `--lease-ms` by default: the PostgreSQL store's own default lease.
pub(crate) const LEASE_MS_DEFAULT: u64 = PostgresOptions::LEASE_DEFAULT.as_millis() as u64;

/// Options of `taskgrid server` (and the coordinator half of `taskgrid up`).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "coordinator")]
pub(crate) struct Args {
    /// Address to listen on (gRPC for workers and HTTP for clients share it).
    #[arg(long, env = "TASKGRID_LISTEN", default_value = "127.0.0.1:7070")]
    pub(crate) listen: SocketAddr,
    /// Where the SQLite database lives (unless --store names another place).
    #[arg(long, env = "TASKGRID_DATA_DIR", default_value = "taskgrid-data")]
    pub(crate) data_dir: PathBuf,
    /// The store: `sqlite:PATH` (default: taskgrid.db in --data-dir) or
    /// `memory` (nothing survives the process: for trials and benchmarks).
    #[arg(long, env = "TASKGRID_STORE")]
    pub(crate) store: Option<StoreConfig>,
    /// A PostgreSQL URL to store in, as `--store postgres://…` (the usual
    /// variable of hosted PostgreSQL; `--store` wins when both are set).
    #[arg(long, env = "TASKGRID_DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// Token clients must send (`Authorization: Bearer`).
    #[arg(long, env = "TASKGRID_CLIENT_TOKEN", hide_env_values = true, value_parser = super::token)]
    pub(crate) client_token: Option<String>,
    /// Token workers must send.
    #[arg(long, env = "TASKGRID_WORKER_TOKEN", hide_env_values = true, value_parser = super::token)]
    pub(crate) worker_token: Option<String>,
    /// Worker heartbeat interval in milliseconds; three missed and the
    /// worker is offline.
    #[arg(long, default_value_t = 5000)]
    pub(crate) heartbeat_ms: u64,
    /// Fsync every commit (survive power loss, not only a crash; SQLite).
    #[arg(long)]
    pub(crate) full_sync: bool,
    /// On PostgreSQL, how long the leader's lease lasts, in milliseconds: a
    /// standby takes over this long after the leader stops renewing it.
    #[arg(long, default_value_t = LEASE_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub(crate) lease_ms: u64,
    /// The URL clients and workers reach this coordinator at, which its
    /// standbys point them to (default: `http://` and the address it
    /// listens on, the host name for 0.0.0.0).
    #[arg(long, env = "TASKGRID_ADVERTISE", value_parser = advertised)]
    pub(crate) advertise: Option<String>,
    /// Finished tasks, with their attempts and output, are deleted once
    /// they ended longer ago than this (e.g. 7d, 12h, 30m); `forever`
    /// keeps them.
    #[arg(long, env = "TASKGRID_RETAIN", default_value = "7d", value_parser = retention, value_name = "DURATION|forever")]
    pub(crate) retain: Retain,
    /// The output of finished tasks is deleted sooner, once they ended
    /// longer ago than this (the task itself stays until --retain);
    /// output of a task that ran longer than this (or than a minute)
    /// stays until --retain.
    #[arg(long, env = "TASKGRID_RETAIN_OUTPUT", value_parser = super::submit::parse_duration, value_name = "DURATION")]
    pub(crate) retain_output: Option<Duration>,
    /// Most tasks waiting in a queue, as QUEUE=N (repeat for more queues):
    /// a submit beyond it is refused with 429 `queue_full`.
    #[arg(long = "queue-limit", value_parser = queue_limit, value_name = "QUEUE=N")]
    pub(crate) queue_limits: Vec<(String, usize)>,
    /// Most tasks of a queue running at once, as QUEUE=N (repeat for more
    /// queues); its other tasks wait.
    #[arg(long = "queue-concurrency", value_parser = queue_concurrency, value_name = "QUEUE=N")]
    pub(crate) queue_concurrency: Vec<(String, u32)>,
    /// Most tasks of a concurrency key running at once, as KEY=N or
    /// PREFIX*=N (each key with the prefix on its own; an exact key wins,
    /// then the longest prefix); repeat for more. Over it, tasks wait.
    #[arg(long = "concurrency-limit", value_parser = concurrency_limit, value_name = "KEY=N")]
    pub(crate) concurrency_limits: Vec<(String, u32)>,
    /// Most starts of a concurrency key per period, as KEY=N/PERIOD or
    /// PREFIX*=N/PERIOD (e.g. api=100/1m, customer-*=5/s): a token bucket
    /// of N refilled over PERIOD; repeat for more. Over it, tasks wait.
    #[arg(long = "rate-limit", value_parser = rate_limit, value_name = "KEY=N/PERIOD")]
    pub(crate) rate_limits: Vec<(String, Rate)>,
    /// The retention of one queue's finished tasks, in place of --retain,
    /// as QUEUE=DURATION or QUEUE=forever (repeat for more queues).
    #[arg(long = "retain-queue", value_parser = queue_retention, value_name = "QUEUE=DURATION|forever")]
    pub(crate) queue_retention: Vec<(String, Retain)>,
    /// The certificate it serves HTTPS and gRPC over TLS with (clients
    /// and workers then use https:// URLs).
    #[command(flatten)]
    pub(crate) tls: Identity,
    /// Workers must present a client certificate signed by this CA (PEM)
    /// (mutual TLS; needs --tls-cert). Clients of the HTTP API need none.
    #[arg(
        long,
        env = "TASKGRID_WORKER_CA",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub(crate) worker_ca: Option<PathBuf>,
    /// Do not advertise this coordinator over mDNS (`_taskgrid._tcp`, for
    /// `taskgrid discover` and `--server auto`).
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// The name it advertises over mDNS (default: taskgrid-HOST-PORT).
    #[arg(long, value_name = "NAME")]
    pub(crate) mdns_name: Option<String>,
}

/// A certificate chain and its key (`--tls-cert`, `--tls-key`): what a
/// coordinator serves TLS with, or what a worker presents to one started
/// with `--worker-ca`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Identity {
    /// Certificate chain (PEM): a coordinator serves HTTPS and gRPC over
    /// TLS with it; a worker presents it to a coordinator started with
    /// --worker-ca. Needs --tls-key.
    #[arg(
        long,
        env = "TASKGRID_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "TASKGRID_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub(crate) tls_key: Option<PathBuf>,
}

/// `--queue-limit QUEUE=N`.
fn queue_limit(s: &str) -> Result<(String, usize), String> {
    let (q, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write a queue limit as QUEUE=N (e.g. emails=10000)"))?;
    if q.is_empty() {
        return Err(format!("{s:?}: the queue name is empty"));
    }
    let n: usize = n
        .parse()
        .map_err(|_| format!("{s:?}: {n:?} is not a number of tasks"))?;
    Ok((q.to_owned(), n))
}

/// `--queue-concurrency QUEUE=N`.
fn queue_concurrency(s: &str) -> Result<(String, u32), String> {
    let (q, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write a queue's concurrency as QUEUE=N (e.g. reports=4)"))?;
    let q = q.trim();
    if q.is_empty() {
        return Err(format!("{s:?}: the queue name is empty"));
    }
    match n.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok((q.to_owned(), n)),
        _ => Err(format!(
            "{s:?}: {n:?} is not a number of tasks of at least 1 (pause a queue with `taskgrid queue pause`)"
        )),
    }
}

/// `--concurrency-limit KEY=N`.
pub(crate) fn concurrency_limit(s: &str) -> Result<(String, u32), String> {
    let (k, n) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: write a concurrency limit as KEY=N or PREFIX*=N (e.g. customer-*=2)")
    })?;
    let n = n
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{s:?}: {n:?} is not a number of tasks"))?;
    let limit = KeyLimit {
        pattern: k.trim().to_owned(),
        concurrency: Some(n),
        rate: None,
    };
    limit.check()?;
    Ok((limit.pattern, n))
}

/// `--rate-limit KEY=N/PERIOD`.
pub(crate) fn rate_limit(s: &str) -> Result<(String, Rate), String> {
    let usage = || {
        format!("{s:?}: write a rate limit as KEY=N/PERIOD or PREFIX*=N/PERIOD (e.g. api=100/1m)")
    };
    let (k, r) = s.split_once('=').ok_or_else(usage)?;
    let (n, per) = r.split_once('/').ok_or_else(usage)?;
    let starts = n
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{s:?}: {n:?} is not a number of starts"))?;
    // `5/s` reads as 5 per 1 s.
    let per = per.trim();
    let per = if per.starts_with(|c: char| c.is_ascii_alphabetic()) {
        super::submit::parse_duration(&format!("1{per}"))
    } else {
        super::submit::parse_duration(per)
    }
    .map_err(|e| format!("{s:?}: {e}"))?;
    let rate = Rate { starts, per };
    let limit = KeyLimit {
        pattern: k.trim().to_owned(),
        concurrency: None,
        rate: Some(rate),
    };
    limit.check()?;
    Ok((limit.pattern, rate))
}

/// The key limits of `--concurrency-limit` and `--rate-limit`, one per
/// pattern.
fn key_limits(concurrency: &[(String, u32)], rates: &[(String, Rate)]) -> Vec<KeyLimit> {
    fn at<'a>(out: &'a mut Vec<KeyLimit>, pattern: &str) -> &'a mut KeyLimit {
        let i = match out.iter().position(|l| l.pattern == pattern) {
            Some(i) => i,
            None => {
                out.push(KeyLimit {
                    pattern: pattern.to_owned(),
                    concurrency: None,
                    rate: None,
                });
                out.len() - 1
            }
        };
        &mut out[i]
    }
    let mut out = Vec::new();
    for (p, n) in concurrency {
        at(&mut out, p).concurrency = Some(*n);
    }
    for (p, r) in rates {
        at(&mut out, p).rate = Some(*r);
    }
    out
}

/// `--retain-queue QUEUE=DURATION|forever`.
fn queue_retention(s: &str) -> Result<(String, Retain), String> {
    let (q, d) = s.split_once('=').ok_or_else(|| {
        format!(
            "{s:?}: write a queue's retention as QUEUE=DURATION or QUEUE=forever (e.g. emails=30d)"
        )
    })?;
    if q.is_empty() {
        return Err(format!("{s:?}: the queue name is empty"));
    }
    Ok((q.to_owned(), retention(d)?))
}

/// `--retain`: how long finished tasks are kept, or forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retain(pub(crate) Option<Duration>);

fn retention(s: &str) -> Result<Retain, String> {
    match s.trim() {
        "forever" | "off" | "never" => Ok(Retain(None)),
        d => humantime::parse_duration(d)
            .map(|d| Retain(Some(d)))
            .map_err(|e| {
                format!(
                    "{s:?} is no retention: {e} (write a duration like 7d, 12h, 30m, or forever)"
                )
            }),
    }
}

/// `--advertise`: an `http://HOST:PORT` URL.
fn advertised(s: &str) -> Result<String, String> {
    let url = s.trim_end_matches('/');
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() && !rest.contains('/') => {
            Ok(url.to_owned())
        }
        _ => Err(format!(
            "{s:?} is no URL of a coordinator; write it as http://HOST:PORT"
        )),
    }
}

/// A coordinator that listens but may not lead yet: its [`Front`] answers
/// 503 `not_leader` (naming the leader) until [`Bound::lead`] returns.
pub(crate) struct Bound {
    pub(crate) addr: SocketAddr,
    /// Where clients and workers reach it.
    pub(crate) address: String,
    store: StoreConfig,
    front: Front,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    args: Args,
    tls: Option<ServerTls>,
    advert: Option<super::discover::Advert>,
}

/// A running coordinator.
pub(crate) struct Coordinator {
    pub(crate) system: Arc<TaskSystem>,
    pub(crate) addr: SocketAddr,
    /// The store it opened (`sqlite:PATH`, `memory`, a redacted URL).
    pub(crate) store: String,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Advertised over mDNS while it lives.
    _advert: Option<super::discover::Advert>,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if !self.listen.ip().is_loopback()
            && (self.client_token.is_none() || self.worker_token.is_none())
        {
            bail!(
                "refusing to listen on {} without --client-token and --worker-token: anyone who can reach it could run commands on your workers",
                self.listen
            );
        }
        Ok(())
    }

    /// The store to open: `--store`, else SQLite in the data directory;
    /// `--full-sync` sets SQLite's durability.
    pub(crate) fn store_config(&self, address: &str) -> anyhow::Result<StoreConfig> {
        let durability = if self.full_sync {
            Durability::PowerLoss
        } else {
            Durability::Process
        };
        let from_url = match (&self.store, &self.database_url) {
            (None, Some(url)) => Some(
                url.parse::<StoreConfig>()
                    .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?,
            ),
            _ => None,
        };
        Ok(match self.store.as_ref().or(from_url.as_ref()) {
            None => {
                let (path, options) = sqlite_in(&self.data_dir, self.full_sync)?;
                StoreConfig::Sqlite { path, options }
            }
            Some(StoreConfig::Sqlite { path, options }) => {
                let mut options = *options;
                options.durability = durability;
                StoreConfig::Sqlite {
                    path: path.clone(),
                    options,
                }
            }
            Some(StoreConfig::Memory) if self.full_sync => {
                bail!("--full-sync applies to a SQLite store; --store memory keeps nothing on disk")
            }
            #[allow(unreachable_patterns)] // every store but SQLite
            Some(other) if self.full_sync => {
                bail!(
                    "--full-sync applies to a SQLite store; {other} commits as the database server is configured (synchronous_commit)"
                )
            }
            Some(StoreConfig::Postgres { url, .. }) => {
                // Any number of coordinators on one database: one leads,
                // the others wait as standbys and take over when its lease
                // lapses.
                let lease = Duration::from_millis(self.lease_ms);
                StoreConfig::Postgres {
                    url: url.clone(),
                    options: PostgresOptions {
                        lease,
                        renew_every: lease / 3,
                        wait: true,
                        address: address.to_owned(),
                    },
                }
            }
            Some(other) => other.clone(),
        })
    }
}

/// Binds the port, opens the store and serves: [`bind`], then
/// [`Bound::lead`].
pub(crate) async fn start(args: &Args) -> anyhow::Result<Coordinator> {
    bind(args).await?.lead().await
}

/// Binds the port and serves the [`Front`]: until this coordinator leads,
/// every request is answered 503 (`not_leader`, naming the leader where
/// one is known), `/healthz` 200.
pub(crate) async fn bind(args: &Args) -> anyhow::Result<Bound> {
    args.check()?;
    // Certificates first: a bad file stops the start before the port is
    // taken.
    let tls = match (&args.tls.tls_cert, &args.tls.tls_key) {
        (Some(cert), Some(key)) => Some(
            ServerTls::load(cert, key, args.worker_ca.as_deref())
                .context("--tls-cert/--tls-key")?,
        ),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // This machine's name: in the address it gives when it listens on
    // every interface, and in the name it advertises over mDNS.
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty());
    let address = match (&args.advertise, &host) {
        (Some(a), _) => a.clone(),
        (None, Some(host)) if addr.ip().is_unspecified() => {
            format!("{scheme}://{host}:{}", addr.port())
        }
        (None, _) => format!("{scheme}://{addr}"),
    };
    let store = args.store_config(&address)?;
    let advert = if args.no_mdns {
        None
    } else {
        let name = args.mdns_name.clone().unwrap_or_else(|| {
            let host = host.as_deref().unwrap_or("host");
            format!("taskgrid-{host}-{}", addr.port())
        });
        let offer = super::discover::Offer {
            name: &name,
            addr,
            url: &address,
            tls: tls.is_some(),
            client_token: args.client_token.is_some(),
            worker_token: args.worker_token.is_some(),
        };
        // Discovery is a convenience: without it the coordinator still
        // serves whoever is given its address.
        match super::discover::advertise(&offer) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!("not advertised over mDNS: {e:#}");
                None
            }
        }
    };
    let front = Front::new(args.client_token.clone());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let app = front.router();
    let stopping = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let serve = match &tls {
        Some(tls) => {
            // Each request carries its connection's `Peer` (for the worker
            // gateway's client-certificate check).
            let listener = TlsListener::new(listener, tls);
            let app = app.into_make_service_with_connect_info::<Peer>();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopping)
                    .await
            })
        }
        None => {
            // Small messages (an accept, a result) must not wait for
            // Nagle's algorithm: with it on, results came back in waves
            // every ~50 ms.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            // Each request carries its remote address (for the audit log).
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopping)
                    .await
            })
        }
    };
    Ok(Bound {
        addr,
        address,
        store,
        front,
        serve,
        stop,
        args: args.clone(),
        tls,
        advert,
    })
}

impl Bound {
    /// Whether several coordinators may share its store (PostgreSQL).
    pub(crate) fn shared(&self) -> bool {
        matches!(self.store, StoreConfig::Postgres { .. })
    }

    /// The store it opens (`sqlite:PATH`, `memory`, a redacted URL).
    pub(crate) fn store(&self) -> String {
        self.store.to_string()
    }

    /// Opens the store — on a shared one, waiting as a standby until this
    /// coordinator takes the lease, telling its front who leads meanwhile —
    /// and serves the API and the worker gateway.
    pub(crate) async fn lead(self) -> anyhow::Result<Coordinator> {
        let args = &self.args;
        let config = SystemConfig {
            check_handlers: false,
            retention: args.retain.0,
            queue_retention: args
                .queue_retention
                .iter()
                .map(|(q, r)| (q.clone(), r.0))
                .collect(),
            engine: taskgrid_core::EngineConfig {
                queue_limits: args.queue_limits.iter().cloned().collect(),
                queue_concurrency: args.queue_concurrency.iter().cloned().collect(),
                key_limits: key_limits(&args.concurrency_limits, &args.rate_limits),
                ..taskgrid_core::EngineConfig::default()
            },
            // A tenth of the shortest retention, between 100 ms and a
            // minute: a task outlives its retention by at most ~10 %, or a
            // minute.
            retention_every: std::iter::once(args.retain.0)
                .chain(args.queue_retention.iter().map(|(_, r)| r.0))
                .flatten()
                .min()
                .map_or(SystemConfig::RETENTION_EVERY_DEFAULT, |r| {
                    (r / 10).clamp(
                        Duration::from_millis(100),
                        SystemConfig::RETENTION_EVERY_DEFAULT,
                    )
                }),
            ..SystemConfig::default()
        };
        let store = self.store.clone();
        let watching = self.watch_leader();
        let builder = TaskSystem::builder()
            .config(config)
            .store_config(store.clone());
        // Opening the store and reading it back is blocking IO: off the
        // async threads.
        let built = tokio::task::spawn_blocking(move || builder.build()).await;
        drop(watching);
        let system = built
            .context("opening the store")?
            .with_context(|| format!("opening the store {store}"))?;
        system.start()?;
        let system = Arc::new(system);
        let gateway = gateway(
            &system,
            GatewayConfig {
                worker_token: args.worker_token.clone(),
                heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(100)),
                ..GatewayConfig::default()
            },
        );
        let api = ApiConfig {
            client_token: args.client_token.clone(),
            address: self.address.clone(),
            ..ApiConfig::default()
        };
        // gRPC is served under its service path; everything else is the API.
        let grpc_path = format!(
            "/{}/{{*rpc}}",
            <WorkerGatewayServer<Gateway> as tonic::server::NamedService>::NAME
        );
        let workers = axum::Router::new().route_service(&grpc_path, gateway);
        let workers = if self
            .tls
            .as_ref()
            .is_some_and(ServerTls::workers_need_certificate)
        {
            workers.layer(axum::middleware::from_fn(tls::require_worker_certificate))
        } else {
            workers
        };
        self.front
            .promote(router(system.clone(), api).merge(workers));
        Ok(Coordinator {
            system,
            addr: self.addr,
            store: store.to_string(),
            serve: self.serve,
            stop: self.stop,
            _advert: self.advert,
        })
    }

    /// On a shared store, reads who leads every 250 ms for the front to
    /// name, until the returned guard is dropped.
    fn watch_leader(&self) -> Option<WatchGuard> {
        #[allow(irrefutable_let_patterns)] // a build without PostgreSQL
        let StoreConfig::Postgres { url, .. } = &self.store else {
            return None;
        };
        let (url, front) = (url.clone(), self.front.clone());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        std::thread::Builder::new()
            .name("taskgrid-standby".to_owned())
            .spawn(move || {
                let mut probe = taskgrid_store::ClusterProbe::new(&url, "public");
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    match probe.read() {
                        Ok(c) => front.set_cluster(c),
                        Err(e) => tracing::debug!(error = %e, "cannot read who leads"),
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
            .ok()?;
        Some(WatchGuard(done))
    }
}

/// Stops the leader watch of [`Bound::lead`] when dropped.
struct WatchGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Coordinator {
    /// Resolves on SIGTERM or Ctrl-C (`Ok`), or when a commit fails (`Err`
    /// with the reason): the coordinator cannot take work any more, and
    /// only a restart, which rebuilds it from what was committed, recovers.
    pub(crate) async fn until_stopped(&self) -> Result<(), String> {
        tokio::select! {
            _ = super::signals::terminated() => Ok(()),
            why = self.system.failed() => Err(why),
        }
    }

    /// After a failed commit: serve what is in flight (each gets its 503),
    /// stop, and say how to recover.
    pub(crate) async fn fail(self, why: String) -> anyhow::Result<()> {
        eprintln!("the store failed: {why}");
        // Stop accepting, and let the requests in flight get their answers
        // (503 `store_failed`) before the process exits. Workers' streams
        // never end by themselves: do not wait for them long.
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.serve).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.system.shutdown()).await;
        if self.system.superseded() {
            bail!(
                "stopped: {why}; nothing committed is lost: restart this coordinator to stand by for the new leader"
            )
        }
        bail!(
            "stopped after a failed commit ({why}); nothing committed is lost: restart taskgrid once the store is writable again"
        )
    }

    /// Stops serving and shuts the task system down gracefully.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.system.shutdown().await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.serve).await;
        Ok(())
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let bound = bind(&args).await?;
    let listening = format!(
        "taskgrid coordinator listening on {} (store {})",
        bound.addr,
        bound.store()
    );
    // On a shared store it may stand by for long: say it listens at once
    // (it answers, pointing to the leader). Else once it serves.
    let shared = bound.shared();
    if shared {
        println!("{listening}");
    }
    // A standby may wait for the lease for ever: a signal stops it.
    let leading = bound.lead();
    tokio::pin!(leading);
    let c = tokio::select! {
        c = &mut leading => c?,
        _ = super::signals::terminated() => {
            eprintln!("shutting down (never led)");
            return Ok(());
        }
    };
    if !shared {
        println!("{listening}");
    } else if let Ok(Some(cluster)) = c.system.cluster().await {
        println!("leading {} (term {})", c.store, cluster.term);
    }
    if let Err(why) = c.until_stopped().await {
        return c.fail(why).await;
    }
    eprintln!("shutting down");
    c.stop().await
}

/// The SQLite file in `data_dir` (created if missing) and its options:
/// fsync every commit with `full_sync`, else survive a crash of the process.
pub(crate) fn sqlite_in(
    data_dir: &std::path::Path,
    full_sync: bool,
) -> anyhow::Result<(PathBuf, SqliteOptions)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let durability = if full_sync {
        Durability::PowerLoss
    } else {
        Durability::Process
    };
    Ok((data_dir.join("taskgrid.db"), SqliteOptions { durability }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_parse_and_merge_per_pattern() {
        assert_eq!(
            concurrency_limit("customer-*=2"),
            Ok(("customer-*".into(), 2))
        );
        let r = |s| rate_limit(s).map(|(k, r)| (k, r.starts, r.per));
        assert_eq!(
            r("api=100/1m"),
            Ok(("api".into(), 100, Duration::from_secs(60)))
        );
        assert_eq!(r("api=5/s"), Ok(("api".into(), 5, Duration::from_secs(1))));
        assert_eq!(
            r("api=3/250ms"),
            Ok(("api".into(), 3, Duration::from_millis(250)))
        );
        assert_eq!(
            r("api=3/.5s"),
            Ok(("api".into(), 3, Duration::from_millis(500)))
        );
        let merged = key_limits(
            &[("a".into(), 2), ("b*".into(), 1)],
            &[("a".into(), rate_limit("a=1/s").unwrap().1)],
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(
            (merged[0].concurrency, merged[0].rate.map(|r| r.starts)),
            (Some(2), Some(1))
        );
        assert_eq!((merged[1].pattern.as_str(), merged[1].rate), ("b*", None));
    }

    #[test]
    fn bad_limit_flags_say_what_is_wrong() {
        let err = |r: Result<(String, u32), String>| r.unwrap_err();
        assert!(err(concurrency_limit("a")).contains("KEY=N or PREFIX*=N"));
        assert!(err(concurrency_limit("a=x")).contains("not a number"));
        assert!(err(concurrency_limit("a=0")).contains("at least 1"));
        assert!(err(concurrency_limit("a*b=1")).contains("PREFIX*"));
        assert!(err(queue_concurrency("q=0")).contains("at least 1"));
        let rerr = |s| rate_limit(s).unwrap_err();
        assert!(rerr("api=5").contains("KEY=N/PERIOD"));
        assert!(rerr("api=0/s").contains("at least 1 start"));
        assert!(rerr("api=5/0s").contains("non-zero period"));
        assert!(rerr("api=5/fortnight").contains("invalid duration"));
    }
}
