//! The audit log: while orders are placed and cancelled, the audit consumer is killed with
//! SIGKILL again and again (and every batch is delivered twice by the redelivery hook); in
//! the end the log holds every event of this test's orders exactly once.

use std::collections::HashMap;
use uuid::Uuid;

use crate::helpers::*;

const ORDERS: usize = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_holds_each_event_once_after_kill_9() {
    let shop = Shop::start().await;
    let settings = flow_settings(&shop).await;
    let redeliver = [("ORDERFLOW_REDELIVER", "true")];
    let product = shop.product(100_000).await;

    let mut audit = Some(Component::start("audit", &settings, &redeliver));
    let mut orders: Vec<Uuid> = Vec::new();
    let mut cancelled = 0;
    let mut kills = 0;
    for i in 0..ORDERS {
        let order = shop.order(1 + (i % 5) as i64, product, 1).await;
        if i % 4 == 0 {
            shop.cancel(order).await;
            cancelled += 1;
        }
        orders.push(order);
        if i % 10 == 9 {
            // Let it write some, then kill -9 and restart.
            let written = audit_lines(&settings).len();
            testkit::eventually("the audit consumer wrote more", WAIT, || async {
                audit_lines(&settings).len() > written
            })
            .await;
            audit.take().unwrap().kill().await;
            kills += 1;
            audit = Some(Component::start("audit", &settings, &redeliver));
        }
    }
    let expected = ORDERS + cancelled;
    let ours = |lines: &[orderflow::audit::Line], orders: &[Uuid]| {
        lines
            .iter()
            .filter(|l| orders.contains(&l.order_id))
            .count()
    };
    testkit::eventually("every event is in the audit log", WAIT, || async {
        ours(&audit_lines(&settings), &orders) >= expected
    })
    .await;
    testkit::eventually("the audit group has no lag", WAIT, || async {
        lag(&settings, &settings.audit_group).await == Some(0)
    })
    .await;
    // One more kill -9 and restart after everything was committed, then one more order: it
    // alone is added.
    audit.take().unwrap().kill().await;
    let audit = Component::start("audit", &settings, &redeliver);
    let last = shop.order(1, product, 1).await;
    orders.push(last);
    let expected = expected + 1;
    testkit::eventually("the last order is in the audit log", WAIT, || async {
        audit_lines(&settings).iter().any(|l| l.order_id == last)
    })
    .await;

    let lines = audit_lines(&settings);
    let mut per_event: HashMap<Uuid, usize> = HashMap::new();
    for line in &lines {
        *per_event.entry(line.event_id).or_default() += 1;
    }
    let doubled: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "events written twice: {doubled:?}");
    assert_eq!(
        ours(&lines, &orders),
        expected,
        "each event of {ORDERS} orders ({cancelled} cancelled) once, after {kills} kills"
    );
    for order in &orders {
        let kinds: Vec<_> = lines
            .iter()
            .filter(|l| l.order_id == *order)
            .map(|l| l.kind.as_str())
            .collect();
        assert_eq!(kinds[0], "PLACED", "{order}: {kinds:?}");
    }

    audit.kill().await;
    shop.stop().await;
    cleanup(&settings).await;
}

fn audit_lines(settings: &orderflow::configuration::Settings) -> Vec<orderflow::audit::Line> {
    orderflow::audit::read_all(&settings.audit_dir).unwrap_or_default()
}
