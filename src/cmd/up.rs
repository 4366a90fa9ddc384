//! `taskgrid up`: a coordinator and a worker in one process — the leader
//! runs tasks itself, one command to a working grid.

use taskgrid_worker::Worker;

/// Options of `taskgrid up`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    server: super::server::Args,
    /// Tasks the local worker runs at once (default: number of CPUs).
    #[arg(long)]
    slots: Option<u32>,
    /// Label of the local worker; repeatable.
    #[arg(long = "label", value_name = "KEY[=VALUE]")]
    labels: Vec<String>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.server.worker_ca.is_none(),
        "--worker-ca is for `taskgrid server`: the local worker of `taskgrid up` has no client certificate"
    );
    let c = super::server::start(&args.server).await?;
    // Over TLS the local worker trusts the coordinator's own certificate
    // (it must name 127.0.0.1, or the --advertise host).
    let (server, ca) = match &args.server.tls.tls_cert {
        Some(cert) => (
            args.server
                .advertise
                .clone()
                .unwrap_or_else(|| format!("https://{}", c.addr)),
            Some(cert.clone()),
        ),
        None => (format!("http://{}", c.addr), None),
    };
    let worker = super::worker::Args {
        server,
        ca,
        tls: super::server::Identity::default(),
        max_load: None,
        worker_token: args.server.worker_token.clone(),
        labels: args.labels.clone(),
        slots: args.slots,
        prefetch: None,
        prefetch_hold_ms: super::worker::PREFETCH_HOLD_MS_DEFAULT,
        cgroup_every_task: false,
        name: Some("local".to_owned()),
        id: Some("local-worker".to_owned()),
        allow: Vec::new(),
        no_shell: false,
        container_runtime: None,
        queues: Vec::new(),
        max_output_bytes: 1 << 20,
        drain_grace_ms: 10_000,
    };
    let config = worker.config()?;
    println!(
        "taskgrid up: coordinator on {} with a local worker ({} slots); store {}",
        c.addr, config.slots, c.store
    );
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(Worker::with_config(config).run_until(async move {
        let _ = drain_rx.await;
    }));
    let stopped = c.until_stopped().await;
    let _ = drain_tx.send(());
    if let Err(why) = stopped {
        agent.abort();
        return c.fail(why).await;
    }
    eprintln!("shutting down");
    let _ = agent.await;
    c.stop().await
}
