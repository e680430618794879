use anyhow::Context;
use crm::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = crm::telemetry::init();
    let settings = crm::configuration::load().context("loading the CRM settings")?;
    let app = Application::build(settings).await?;
    app.run_until_stopped().await
}
