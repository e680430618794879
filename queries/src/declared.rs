//! The continuous queries, declared in one place: each one's result key, columns and
//! dataflow over the source collections. Adding a query is adding an entry to [`ALL`] (and
//! its topic and Avro contract in `topics`).
//!
//! | query | key | condition |
//! |---|---|---|
//! | `product-catalogue` | productId | every product, with review count and average rating |
//! | `low-stock` | productId | 0 < stock < 20 |
//! | `critical-stock` | productId | stock < 5 |
//! | `at-risk-orders` | orderId | Processing, and the product's stock is below the quantity |
//! | `delayed-gold-orders` | orderId | a Gold customer's order still Processing `delay` after creation |
//!
//! The stock queries carry no stock column on purpose: a product entering the condition is
//! one `added` result (the business event), leaving it one `deleted`; stock changes while
//! inside change nothing.

use differential_dataflow::AsCollection;
use timely::dataflow::operators::vec::Map;
use topics::spec;

use crate::model::{OrderStatus, Tier};
use crate::query::{Answer, Inputs, Query, Time};
use crate::row::{Cell, Column};

pub const PRODUCT_CATALOGUE: Query = Query {
    name: "product-catalogue",
    topic: &spec::QUERIES_PRODUCT_CATALOGUE,
    history: None,
    key: "productId",
    columns: &[
        Column::long("productId"),
        Column::text("name"),
        Column::text("price"),
        Column::long("stock"),
        Column::long("reviewCount"),
        Column::optional_double("averageRating"),
    ],
    build: product_catalogue,
};

pub const LOW_STOCK: Query = Query {
    name: "low-stock",
    topic: &spec::QUERIES_LOW_STOCK,
    history: Some(&spec::QUERIES_LOW_STOCK_HISTORY),
    key: "productId",
    columns: &[Column::long("productId"), Column::text("name")],
    build: low_stock,
};

pub const CRITICAL_STOCK: Query = Query {
    name: "critical-stock",
    topic: &spec::QUERIES_CRITICAL_STOCK,
    history: Some(&spec::QUERIES_CRITICAL_STOCK_HISTORY),
    key: "productId",
    columns: &[Column::long("productId"), Column::text("name")],
    build: critical_stock,
};

pub const AT_RISK_ORDERS: Query = Query {
    name: "at-risk-orders",
    topic: &spec::QUERIES_AT_RISK_ORDERS,
    history: None,
    key: "orderId",
    columns: &[
        Column::text("orderId"),
        Column::long("customerId"),
        Column::long("productId"),
        Column::long("quantity"),
        Column::long("stock"),
    ],
    build: at_risk_orders,
};

pub const DELAYED_GOLD_ORDERS: Query = Query {
    name: "delayed-gold-orders",
    topic: &spec::QUERIES_DELAYED_GOLD_ORDERS,
    history: None,
    key: "orderId",
    columns: &[
        Column::text("orderId"),
        Column::long("customerId"),
        Column::text("customerName"),
        Column::long("productId"),
        Column::long("quantity"),
        Column::timestamp("createdAt"),
    ],
    build: delayed_gold_orders,
};

/// Every query the engine maintains.
pub const ALL: &[Query] = &[
    PRODUCT_CATALOGUE,
    LOW_STOCK,
    CRITICAL_STOCK,
    AT_RISK_ORDERS,
    DELAYED_GOLD_ORDERS,
];

/// Looks a query up by name.
pub fn find(name: &str) -> Option<&'static Query> {
    ALL.iter().find(|q| q.name == name)
}

/// products ⟕ (count, sum of ratings) of reviews per product.
fn product_catalogue<'s>(inputs: &Inputs<'s>) -> Answer<'s> {
    let products = inputs.products.clone().map(|p| (p.id, p));
    let stats = inputs
        .reviews
        .clone()
        .map(|r| (r.product_id, r.rating))
        .reduce(|_product, ratings, out| {
            let (mut count, mut sum) = (0i64, 0i64);
            for (rating, n) in ratings {
                let n = *n as i64;
                count += n;
                sum += **rating * n;
            }
            out.push(((count, sum), 1));
        });
    let reviewed = products
        .clone()
        .join(stats.clone())
        .map(|(_, (p, (count, sum)))| (p, count, Some(sum as f64 / count as f64)));
    let unreviewed = products
        .antijoin(stats.map(|(id, _)| id))
        .map(|(_, p)| (p, 0, None));
    reviewed.concat(unreviewed).map(|(p, count, average)| {
        (
            p.id.to_string(),
            vec![
                Cell::Long(p.id),
                Cell::Text(p.name),
                Cell::Text(p.price),
                Cell::Long(p.stock),
                Cell::Long(count),
                average.map_or(Cell::Null, Cell::Double),
            ],
        )
    })
}

fn low_stock<'s>(inputs: &Inputs<'s>) -> Answer<'s> {
    inputs
        .products
        .clone()
        .filter(|p| p.stock > 0 && p.stock < 20)
        .map(|p| (p.id.to_string(), vec![Cell::Long(p.id), Cell::Text(p.name)]))
}

fn critical_stock<'s>(inputs: &Inputs<'s>) -> Answer<'s> {
    inputs
        .products
        .clone()
        .filter(|p| p.stock < 5)
        .map(|p| (p.id.to_string(), vec![Cell::Long(p.id), Cell::Text(p.name)]))
}

/// Processing orders ⋈ products on product id, where stock < quantity (across databases).
fn at_risk_orders<'s>(inputs: &Inputs<'s>) -> Answer<'s> {
    let processing = inputs
        .orders
        .clone()
        .filter(|o| o.status == OrderStatus::Processing)
        .map(|o| (o.product_id, o));
    let stock = inputs.products.clone().map(|p| (p.id, p.stock));
    processing
        .join(stock)
        .filter(|(_, (o, stock))| *stock < o.quantity)
        .map(|(_, (o, stock))| {
            (
                o.id.clone(),
                vec![
                    Cell::Text(o.id),
                    Cell::Long(o.customer_id),
                    Cell::Long(o.product_id),
                    Cell::Long(o.quantity),
                    Cell::Long(stock),
                ],
            )
        })
}

/// Processing orders, each held back until `created + delay` (a temporal filter: every update
/// of an order, its insert and its retraction alike, takes effect at the later of its own time
/// and `created + delay`, so an order shipped before then never shows), ⋈ Gold customers.
fn delayed_gold_orders<'s>(inputs: &Inputs<'s>) -> Answer<'s> {
    let delay = inputs.params.gold_order_delay_ms;
    let processing = inputs
        .orders
        .clone()
        .filter(|o| o.status == OrderStatus::Processing)
        .inner
        .map(move |(o, time, diff)| {
            let due = (o.created_ms.max(0) as Time).saturating_add(delay);
            let at = time.max(due);
            ((o.customer_id, o), at, diff)
        })
        .as_collection();
    let gold = inputs
        .customers
        .clone()
        .filter(|c| c.tier == Tier::Gold)
        .map(|c| (c.id, c.name));
    processing.join(gold).map(|(_, (o, name))| {
        (
            o.id.clone(),
            vec![
                Cell::Text(o.id),
                Cell::Long(o.customer_id),
                Cell::Text(name),
                Cell::Long(o.product_id),
                Cell::Long(o.quantity),
                Cell::Long(o.created_ms),
            ],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_a_column_and_names_are_unique() {
        let mut names: Vec<_> = ALL.iter().map(|q| q.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for q in ALL {
            assert!(q.columns.iter().any(|c| c.name == q.key), "{}", q.name);
            assert_eq!(find(q.name).map(|f| f.topic.name), Some(q.topic.name));
        }
    }

    #[test]
    fn columns_match_the_contracts_row_record() {
        for q in ALL {
            let schema: serde_json::Value =
                serde_json::from_str(q.topic.value_schema.unwrap()).unwrap();
            let before = &schema["fields"][3]["type"][1];
            let fields: Vec<_> = before["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_owned())
                .collect();
            let columns: Vec<_> = q.columns.iter().map(|c| c.name.to_owned()).collect();
            assert_eq!(fields, columns, "{}", q.name);
            assert_eq!(q.topic.name, format!("queries.{}", q.name));
            if let Some(history) = q.history {
                assert_eq!(history.name, format!("queries.{}.history", q.name));
                assert_eq!(history.value_schema, q.topic.value_schema, "{}", q.name);
                assert_eq!(history.cleanup_policy, spec::CleanupPolicy::Delete);
            }
        }
    }
}
