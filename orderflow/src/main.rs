//! `orderflow <component>`: runs one component of the order flow as its own process (saga,
//! payments, restock, loyalty, audit), until SIGTERM or ctrl-c.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderflow::audit::AuditLog;
use orderflow::clients::Clients;
use orderflow::configuration::{self, Settings};
use orderflow::consumer::ConsumerConfig;
use orderflow::loyalty::Loyalty;
use orderflow::payments::Payments;
use orderflow::saga::mail::MailLog;
use orderflow::saga::{self, Saga, Step};
use tokio::sync::{watch, Notify};

#[derive(Parser)]
#[command(about = "The order flow: checkout saga, payments, restock timer, loyalty, audit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The checkout saga: intake of PLACED events and the step workers.
    Saga,
    /// The simulated payment provider (default 127.0.0.1:3020).
    Payments,
    /// The restock timer poller and executor.
    Restock,
    /// Loyalty points per order (`LOYALTY_MODE=exactly-once|naive`).
    Loyalty,
    /// The audit log of every order event.
    Audit,
    /// The tracking read model: order status per order and per customer (default 127.0.0.1:3021).
    Tracking,
    /// Where one order stands: its saga, email, loyalty points and audit lines.
    Show {
        /// The order id.
        order: uuid::Uuid,
    },
    /// Everything as processes, killed at random while orders flow; then the checks.
    Chaos(orderflow::chaos::ChaosArgs),
}

impl Command {
    /// The component's name (its service name is `orderflow-<name>`).
    fn name(&self) -> &'static str {
        match self {
            Command::Saga => "saga",
            Command::Payments => "payments",
            Command::Restock => "restock",
            Command::Loyalty => "loyalty",
            Command::Audit => "audit",
            Command::Tracking => "tracking",
            Command::Show { .. } => "show",
            Command::Chaos(_) => "chaos",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = orderflow::telemetry::init(cli.command.name());
    if let Command::Chaos(args) = cli.command {
        return orderflow::chaos::run(args).await;
    }
    let settings = configuration::load().context("loading the orderflow settings")?;
    if matches!(
        cli.command,
        Command::Saga | Command::Restock | Command::Loyalty | Command::Audit
    ) {
        orderflow::telemetry::serve_metrics(&settings.metrics_listen_addr)
            .await
            .with_context(|| format!("metrics listener on {}", settings.metrics_listen_addr))?;
    }
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    match cli.command {
        Command::Saga => run_saga(settings, stopped).await,
        Command::Payments => {
            let payments = Payments::build(&settings).await?;
            let mut stopped = stopped;
            payments
                .serve(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }
        Command::Restock => {
            let pool = saga_pool(&settings, 4).await?;
            orderflow::restock::run(
                pool,
                Clients::new(&settings),
                settings.restock_quantity,
                settings.restock_poll(),
                stopped,
            )
            .await;
            Ok(())
        }
        Command::Loyalty => {
            let pool = outbox::database::prepare(
                &settings.server_options()?,
                &settings.loyalty_database,
                &orderflow::loyalty::MIGRATOR,
                settings.orderflow_pool_size,
            )
            .await?;
            let loyalty = Loyalty {
                pool,
                mode: settings
                    .loyalty_mode
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!(e))?,
                points_per_item: settings.loyalty_points_per_item,
            };
            tracing::info!(mode = ?loyalty.mode, "loyalty starting");
            loyalty
                .run(
                    &settings.kafka,
                    ConsumerConfig::new(&settings.loyalty_group),
                    stopped,
                )
                .await?;
            Ok(())
        }
        Command::Tracking => orderflow::tracking::run(&settings, stopped).await,
        Command::Show { order } => show(&settings, order).await,
        Command::Chaos(_) => unreachable!("handled above"),
        Command::Audit => {
            let log = AuditLog::open(&settings.audit_dir)?;
            log.run(
                &settings.kafka,
                ConsumerConfig::new(&settings.audit_group),
                stopped,
            )
            .await?;
            Ok(())
        }
    }
}

async fn saga_pool(settings: &Settings, connections: u32) -> anyhow::Result<sqlx::PgPool> {
    outbox::database::prepare(
        &settings.server_options()?,
        &settings.orderflow_database,
        &saga::MIGRATOR,
        connections,
    )
    .await
    .context("preparing the saga's database")
}

async fn run_saga(settings: Settings, stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let workers = settings.saga_concurrency.max(1);
    let pool = saga_pool(&settings, (workers as u32) * 2 + 4).await?;
    let crash_at = match settings.saga_crash_at.trim() {
        "" => None,
        step => Some(step.parse::<Step>().map_err(|e| anyhow::anyhow!(e))?),
    };
    let crash_order = match settings.saga_crash_order.trim() {
        "" => None,
        order => Some(order.parse::<uuid::Uuid>()?),
    };
    let wake = Arc::new(Notify::new());
    let saga = Saga {
        pool: pool.clone(),
        clients: Clients::new(&settings),
        mail: MailLog::new(&settings.mail_log),
        restock_delay: settings.restock_delay(),
        crash_at,
        crash_order,
        wake: wake.clone(),
    };
    let intake = {
        let kafka = settings.kafka.clone();
        let config = ConsumerConfig::new(&settings.saga_group);
        let stopped = stopped.clone();
        tokio::spawn(async move { saga::intake::run(&kafka, config, pool, wake, stopped).await })
    };
    tracing::info!(workers, crash_at = ?crash_at, "saga starting");
    saga.run_workers(workers, stopped).await;
    intake.await.context("saga intake")??;
    Ok(())
}

/// `orderflow show <order>`: the saga's status and steps, the email, the loyalty award and
/// the customer's points, and the order's audit lines.
async fn show(settings: &Settings, order: uuid::Uuid) -> anyhow::Result<()> {
    let server = settings.server_options()?;
    let connect = |database: &str| {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(server.clone().database(database))
    };
    let flow = connect(&settings.orderflow_database)
        .await
        .with_context(|| format!("connecting to {}", settings.orderflow_database))?;
    let saga: Option<(String, String, Option<String>)> =
        sqlx::query_as("SELECT status, step, failure FROM sagas WHERE order_id = $1")
            .bind(order)
            .fetch_optional(&flow)
            .await?;
    match saga {
        None => println!("saga: none yet for order {order}"),
        Some((status, step, failure)) => {
            let steps: Vec<String> = sqlx::query_scalar(
                "SELECT step FROM saga_steps WHERE order_id = $1 ORDER BY completed_at, step",
            )
            .bind(order)
            .fetch_all(&flow)
            .await?;
            let failure = failure.map(|f| format!(" ({f})")).unwrap_or_default();
            println!(
                "saga: {status}{failure}, at step {step}; steps done: {}",
                steps.join(" → ")
            );
        }
    }
    let mails = MailLog::read_all(&settings.mail_log)?;
    if let Some(mail) = mails.iter().find(|m| m.order_id == order) {
        println!("email: to {}: {:?}", mail.to, mail.subject);
    }
    let loyalty = connect(&settings.loyalty_database)
        .await
        .with_context(|| format!("connecting to {}", settings.loyalty_database))?;
    let award: Option<(i64, i64)> =
        sqlx::query_as("SELECT customer_id, points FROM loyalty_ledger WHERE order_id = $1")
            .bind(order)
            .fetch_optional(&loyalty)
            .await?;
    match award {
        None => println!("loyalty: no award yet"),
        Some((customer, points)) => {
            let (total, orders): (i64, i64) = sqlx::query_as(
                "SELECT points, orders FROM loyalty_accounts WHERE customer_id = $1",
            )
            .bind(customer)
            .fetch_one(&loyalty)
            .await?;
            println!("loyalty: +{points} points; customer {customer} has {total} points over {orders} orders");
        }
    }
    for line in orderflow::audit::read_all(&settings.audit_dir)?
        .iter()
        .filter(|l| l.order_id == order)
    {
        println!("audit: {}", serde_json::to_string(line)?);
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}
